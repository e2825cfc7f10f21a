"""The training loop: a DeepSpeed engine over an OLMo 2 model, shared by pretrain, grow, SFT,
DPO and RLVR (each stage brings its objective: lmforge.posttrain.dpo, lmforge.posttrain.rlvr).

On a machine without GPUs DeepSpeed picks its CPU accelerator and the gloo backend; the same
code runs under the `deepspeed` launcher on a GPU cluster, where ZeRO stage and bf16 come from
the config.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from lmforge.io.storage import write_json
from lmforge.model.checkpoint import save_model, save_moments
from lmforge.model.olmo2 import Olmo2, cross_entropy_and_z_loss
from lmforge.model.olmoe import Olmoe
from lmforge.train.checkpointing import (
    global_batch,
    is_rank0,
    resume_point,
    save_step,
    shared_atomic_dir,
    universal_checkpoint,
    universal_state,
)
from lmforge.train.config import TrainConfig
from lmforge.train.data import Batch
from lmforge.train.metrics import peak_flops, write_metrics
from lmforge.train.optim import (
    compile_blocks,
    deepspeed_config,
    full_moments,
    lr_lambda,
    param_groups,
    start_from_moments,
)

log = logging.getLogger(__name__)
# What a training step's objective returns: the loss to back-propagate, the numbers to log
# (averaged over the log window) and the tokens it trained on (for throughput and FLOPs).
Objective = Callable[[object, object, dict], tuple[torch.Tensor, dict[str, float], int]]


def _ensure_distributed_env() -> None:
    """Outside a launcher, describe a one-process world so DeepSpeed can start gloo."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def training_loss(engine, inputs, labels, cfg: TrainConfig, doc_ids=None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy plus OLMo's z-loss on the output logits (weight `z_loss`, 1e-5 in OLMo 2)
    and, for OLMoE, the router's load-balancing and z-losses; the parts for logging (the
    cross-entropy per token). `loss_reduction: sum` sums over the labelled tokens instead of
    averaging (open-instruct's option for SFT: every token weighs the same across
    micro-batches with different numbers of labels). `doc_ids` marks packed documents."""
    chunked = ({"labels": labels, "z_weight": cfg.z_loss,
                "chunk_tokens": cfg.loss_chunk_tokens} if cfg.loss_chunk_tokens else {})
    if isinstance(engine.module, Olmoe):
        out, aux = engine(inputs, return_aux=True, doc_ids=doc_ids, **chunked)
    else:
        out, aux = engine(inputs, doc_ids=doc_ids, **chunked), {}
    if chunked:
        loss, ce, log_partition_sq = out
    else:
        ce, log_partition_sq = cross_entropy_and_z_loss(out, labels)
        loss = ce + cfg.z_loss * log_partition_sq
    z_loss = cfg.z_loss * log_partition_sq
    scale = int((labels != -100).sum()) if cfg.loss_reduction == "sum" else 1
    total = loss * scale + sum(aux.values())
    return total, {"loss": ce.item(), "z_loss": z_loss.item(),
                   **{k: v.item() for k, v in aux.items()}}


def language_modeling(engine, batch: Batch, cfg: TrainConfig
                      ) -> tuple[torch.Tensor, dict[str, float], int]:
    """The default objective: (inputs, labels) or, for packed documents, (inputs, labels,
    doc_ids) under training_loss."""
    inputs, labels, *doc_ids = (t.to(engine.device) for t in batch)
    loss, parts = training_loss(engine, inputs, labels, cfg, *doc_ids)
    return loss, parts, int((labels != -100).sum())


def _across_ranks(window: dict[str, float], tokens: int, world_size: int):
    """Metrics as the mean over data-parallel ranks, tokens as their sum (rank 0 logs them)."""
    if world_size == 1:
        return window, tokens
    import torch.distributed as dist

    names = sorted(window)
    values = torch.tensor([window[k] for k in names] + [tokens], dtype=torch.float64)
    dist.all_reduce(values)
    return ({k: float(v) / world_size for k, v in zip(names, values)}, int(values[-1]))


def whole_parameters(engine):
    """Every parameter whole on every rank while inside (collective): ZeRO-3 keeps a slice of
    each per rank, and a checkpoint must hold the model."""
    if not engine.zero_optimization_partition_weights():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(engine.module.parameters()),
                                             modifier_rank=None)


def _start_from_universal(engine, weights: dict, moments: dict, step: int) -> None:
    """A fresh ZeRO-3 engine, whose module already holds `weights`, continues a run at `step`:
    the fp32 master weights (bf16 modules held only their rounding), AdamW's moments and step
    count, and the learning-rate schedule."""
    from deepspeed.utils import safe_set_full_fp32_param

    for name, param in engine.module.named_parameters():
        safe_set_full_fp32_param(param, weights[name])
    start_from_moments(engine, moments, step)
    engine.lr_scheduler.last_epoch = step - 1
    engine.lr_scheduler.step()


def train(model: Olmo2, batches: Callable[[int, int], object], cfg: TrainConfig | Mapping,
          seed: int, checkpoint_dir: str | Path, metrics_path: str | Path, tracker=None,
          start=None,
          heldout: Callable[[torch.nn.Module, torch.device], float | dict] | None = None,
          first_instance: int = 0, objective: Objective = language_modeling,
          lr_scale: dict[str, float] | None = None) -> dict:
    """Train for cfg.steps optimizer steps; write the checkpoint and a metrics CSV atomically.

    Every `checkpoint_every` steps the full engine state goes to `<checkpoint_dir>.steps/`
    (the newest `keep_last` are kept); a restarted run resumes from the newest one and, as the
    data order depends only on the step, continues exactly where the killed one stopped.

    `start` (a lmforge.train.grow.TrainingState) continues a grown training state: its moments,
    step count and per-parameter learning-rate scales (`lr_scale` sets such scales for a fresh
    run: parameter name → factor on lr). With `save_moments` the final
    checkpoint holds every parameter's moments (optimizer_moments.safetensors) for growth.
    `heldout` (see heldout_loss_fn) is evaluated every `eval_every` steps (a multiple of
    `log_every`) and at the end, as the metrics' valid_loss (or, returning a dict, as its
    columns). `objective` turns a micro-batch into the loss (default: language modeling).
    The trainer state records where the data order stops (`next_instance`), for a stage that
    continues it."""
    cfg = TrainConfig.of(cfg)
    _ensure_distributed_env()
    if torch.cuda.is_available():  # one device per process on a node
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    import deepspeed

    from lmforge.train.plan import check_fits, device_memory_bytes, estimate, markdown

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    eval_every = cfg.eval_every
    if eval_every and heldout is None:
        raise ValueError("eval_every is set but this stage has no held-out tokens to evaluate")
    if eval_every % cfg.log_every:
        raise ValueError(f"eval_every {eval_every} is not a multiple of log_every "
                         f"{cfg.log_every}")
    plan = estimate(model.cfg, cfg, world_size)
    log.info("plan:\n%s", markdown(plan))
    check_fits(plan, device_memory_bytes("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    # A wrapped decoder (soft prompt, vision tower) checkpoints the decoder's blocks.
    getattr(model, "decoder", model).activation_checkpointing = cfg.activation_checkpointing
    if cfg.loss_chunk_tokens and (objective is not language_modeling or hasattr(model, "decoder")):
        raise ValueError("loss_chunk_tokens is for the language-modeling stages of a bare "
                         "decoder (pretrain, grow, mid-training, SFT): this stage needs the "
                         "logits themselves")
    if cfg.compile:
        compile_blocks(model)
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl",
                               verbose=False)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.decay_embeddings,
                     cfg.decay_norms, cfg.lr,
                     start.lr_scale if start is not None else lr_scale),
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    resume = resume_point(checkpoint_dir, cfg, world_size)
    # ZeRO shards the optimizer state per rank: another number of processes needs its
    # universal form. Without ZeRO every rank holds it whole and any world size loads it.
    reshard = (resume is not None and resume[1]["world_size"] != world_size
               and cfg.zero_stage > 0)
    resharded_zero3 = None
    if reshard and cfg.zero_stage == 3:
        # DeepSpeed's universal loader does not continue a ZeRO-3 run exactly (the loss drifted
        # from the uninterrupted run's; one cause: it gives every parameter group the first
        # group's settings). Its converter's per-parameter files are exact: the engine starts
        # from them as from a grown state.
        resharded_zero3 = universal_state(universal_checkpoint(resume[0]), model)
        model.load_state_dict(resharded_zero3[0])
    ds_config = deepspeed_config(cfg, world_size)
    if reshard and resharded_zero3 is None:
        ds_config["checkpoint"] = {"load_universal": True}
    # Counted before ZeRO-3 partitions the parameters (each rank then holds a slice).
    flops_per_token = model.flops_per_token()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    rows, started, tokens_seen, first_step = [], time.perf_counter(), 0, 0
    window: dict[str, float] = {}
    window_tokens, window_start = 0, time.perf_counter()
    if start is not None and resume is None and start.moments:
        start_from_moments(engine, start.moments, start.step)
    if resume is not None:
        latest, resumed = resume
        if resharded_zero3 is not None:
            _start_from_universal(engine, *resharded_zero3, resumed["step"])
        else:
            engine_dir = universal_checkpoint(latest) if reshard else latest / "deepspeed"
            engine.load_checkpoint(str(engine_dir), tag="state")
        torch.set_rng_state(torch.load(latest / "rng.pt"))
        log.info("resuming from %s (step %d, %d → %d processes)", latest, resumed["step"],
                 resumed["world_size"], world_size)
        first_step, rows, tokens_seen = resumed["step"], resumed["rows"], resumed["tokens_seen"]
        window, window_tokens = resumed["window"], resumed["window_tokens"]
    every = cfg.checkpoint_every
    peak = peak_flops(engine.device, cfg)
    for step in range(first_step, cfg.steps):
        for micro_step in range(cfg.grad_accum):
            loss, parts, trained_tokens = objective(engine, batches(step, micro_step), cfg)
            engine.backward(loss)
            engine.step()
            for name, value in parts.items():
                window[name] = window.get(name, 0.0) + value / cfg.grad_accum
            window_tokens += trained_tokens
        grad_norm = engine.get_global_grad_norm()  # before clipping
        window["grad_norm"] = window.get("grad_norm", 0.0) + (
            float(grad_norm) if grad_norm is not None else math.nan)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            window, window_tokens = _across_ranks(window, window_tokens, world_size)
            tokens_seen += window_tokens
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            row = {"step": step + 1, **{k: v / n for k, v in window.items()},
                   "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen,
                   "tokens_per_s": tokens_per_s,
                   "flops": tokens_seen * flops_per_token,
                   "mfu": flops_per_token * tokens_per_s / world_size / peak
                   if peak else None}
            if eval_every and ((step + 1) % eval_every == 0 or step + 1 == cfg.steps):
                scores = heldout(engine.module, engine.device)
                row.update(scores if isinstance(scores, dict) else {"valid_loss": scores})
            rows.append(row)
            log.info("step %(step)d loss %(loss).4f lr %(lr).2e tok/s %(tokens_per_s).0f", row)
            if tracker is not None and is_rank0():
                tracker.log_metrics({f"train/{k}": v for k, v in row.items()
                                     if k != "step" and v is not None}, step=step + 1)
            window, window_tokens, window_start = {}, 0, time.perf_counter()
        if every and (step + 1) % every == 0 and step + 1 < cfg.steps:
            save_step(engine, checkpoint_dir, step + 1, {
                "step": step + 1, "rows": rows, "tokens_seen": tokens_seen, "window": window,
                "window_tokens": window_tokens, "seed": seed, "config": cfg.to_dict(),
                "world_size": world_size},
                cfg.keep_last)
    summary = {"steps": cfg.steps, "resumed_from_step": first_step, "tokens_seen": tokens_seen,
               "final_loss": rows[-1]["loss"], "seconds": time.perf_counter() - started}
    summary.update({f"final_{k}": v for k, v in rows[-1].items() if k.startswith("valid_")})
    moments = full_moments(engine) if cfg.save_moments else None
    with shared_atomic_dir(checkpoint_dir) as tmp:
        # Full engine state (optimizer moments, scheduler, step) for exact continuation.
        engine.save_checkpoint(str(tmp / "deepspeed"), tag="final")
        with whole_parameters(engine):
            if is_rank0():
                save_model(engine.module, tmp)
            if moments is not None:
                save_moments(moments, (start.step if start else 0) + cfg.steps, tmp)
            next_instance = first_instance + cfg.steps * global_batch(cfg, world_size)
            write_json(tmp / "trainer_state.json", {**summary, "seed": seed,
                                                    "config": cfg.to_dict(),
                                                    "next_instance": next_instance,
                                                    "world_size": world_size})
    if is_rank0():
        write_metrics(metrics_path, rows)
        shutil.rmtree(f"{checkpoint_dir}.steps", ignore_errors=True)
    return summary

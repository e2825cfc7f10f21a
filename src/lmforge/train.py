"""The training loop: a DeepSpeed engine over an OLMo 2 model, shared by pretrain, grow, SFT,
DPO and RLVR (each stage brings its objective: lmforge.dpo, lmforge.rlvr).

On a machine without GPUs DeepSpeed picks its CPU accelerator and the gloo backend; the same
code runs under the `deepspeed` launcher on a GPU cluster, where ZeRO stage and bf16 come from
the config.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lmforge.checkpoint import save_model, save_moments
from lmforge.model import Olmo2, causal_lm_loss, cross_entropy_and_z_loss
from lmforge.olmoe import Olmoe
from lmforge.storage import atomic_dir, atomic_path, save_figure, write_json

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, ...]
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


def lr_lambda(step: int, cfg: dict) -> float:
    """Linear warm-up, then cosine (OLMo 2 pretraining) or linear (OLMo 2 mid-training anneal)
    decay to min_lr_ratio × lr over `schedule_steps` (default: this stage's steps). A stage
    that continues an earlier one's schedule (a grown model) starts at `schedule_offset` and
    may re-warm linearly over `rewarm_steps`. With a fixed global batch, steps measure tokens."""
    rewarm = cfg.get("rewarm_steps", 0)
    factor = min(1.0, (step + 1) / rewarm) if rewarm else 1.0
    step += cfg.get("schedule_offset", 0)
    warmup, total = cfg["warmup_steps"], cfg.get("schedule_steps", cfg["steps"])
    if step < warmup:
        return factor * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg["min_lr_ratio"]
    if cfg.get("schedule", "cosine") == "linear":
        return factor * (floor + (1 - floor) * (1 - progress))
    return factor * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: Olmo2 | Olmoe, weight_decay: float, decay_embeddings: bool = False,
                 decay_norms: bool = True, lr: float | None = None,
                 lr_scale: dict[str, float] | None = None) -> list[dict]:
    """Weight decay on every weight except the embeddings (`decay_embeddings`), norms included
    (`decay_norms`): OLMo 2's `decay_embeddings: false`, `decay_norm_and_bias: true`. A grown
    model's `lr_scale` (lmforge.grow) splits the groups further: lr × scale, decay ÷ scale."""
    if lr_scale:
        from lmforge.grow import scaled_param_groups

        exempt = {name for name, param in model.named_parameters()
                  if (param.ndim < 2 and not decay_norms)
                  or ("embed_tokens" in name and not decay_embeddings)}
        groups = scaled_param_groups(model, lr, weight_decay, lr_scale, exempt)
        return [{k: v for k, v in g.items() if k != "names"} for g in groups]
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = ((param.ndim < 2 and not decay_norms)
                  or ("embed_tokens" in name and not decay_embeddings))
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


MOMENTS = ("exp_avg", "exp_avg_sq")


def full_moments(engine) -> dict[str, dict[str, torch.Tensor]]:
    """Every parameter's whole AdamW moments. Under ZeRO each rank holds a slice and this is
    collective: every rank must call it."""
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    _link_state_slices(engine.optimizer)
    moments = {}
    for name, param in engine.module.named_parameters():
        # ZeRO 1/2 and bf16 master weights: every rank takes part for every parameter, also
        # where it holds no slice of it (its _hp_mapping is None then).
        if hasattr(param, "_hp_mapping"):
            moments[name] = {k: safe_get_full_optimizer_state(param, k).detach().float().cpu()
                             for k in MOMENTS}
        else:  # ZeRO 0 in fp32: the torch optimizer itself
            moments[name] = {k: inner.state[param][k].detach().float().cpu() for k in MOMENTS}
    return moments


def _link_state_slices(optimizer) -> None:
    """Point each parameter at its slice of ZeRO's flat optimizer state. DeepSpeed links them
    once, after the first step, and a group whose state did not exist yet then stays unlinked
    (seen for the embeddings' group), so link again when reading or writing the state."""
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def start_from_moments(engine, moments: dict, step: int) -> None:
    """Give a fresh engine's AdamW these moments and step count (a grown training state)."""
    from deepspeed.utils import safe_set_full_optimizer_state

    optimizer = engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    params = dict(engine.module.named_parameters())
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO 1/2 create their flat fp32 state on the first step; create it now (zeros) and
        # link each parameter's slice of it, as that first step would, then fill the slices.
        for group in inner.param_groups:
            for flat in group["params"]:
                inner.state[flat] = {"step": torch.tensor(float(step)),
                                     **{k: torch.zeros_like(flat) for k in MOMENTS}}
        _link_state_slices(optimizer)
        for name, param in params.items():
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, moments[name][key].to(param.device), key)
    elif isinstance(inner, torch.optim.Optimizer) and inner is optimizer:
        for name, param in params.items():
            inner.state[param] = {"step": torch.tensor(float(step)),
                                  **{k: moments[name][k].to(param.device).clone()
                                     for k in MOMENTS}}
    else:
        raise ValueError("a grown optimizer state needs zero_stage 1 or 2, or zero_stage 0 in "
                         "fp32")


def training_loss(engine, inputs, labels, cfg: dict, doc_ids=None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy plus OLMo's z-loss on the output logits (weight `z_loss`, 1e-5 in OLMo 2)
    and, for OLMoE, the router's load-balancing and z-losses; the parts for logging (the
    cross-entropy per token). `loss_reduction: sum` sums over the labelled tokens instead of
    averaging (open-instruct's option for SFT: every token weighs the same across
    micro-batches with different numbers of labels). `doc_ids` marks packed documents."""
    if isinstance(engine.module, Olmoe):
        logits, aux = engine(inputs, return_aux=True, doc_ids=doc_ids)
    else:
        logits, aux = engine(inputs, doc_ids=doc_ids), {}
    ce, log_partition_sq = cross_entropy_and_z_loss(logits, labels)
    z_loss = cfg.get("z_loss", 0.0) * log_partition_sq
    scale = int((labels != -100).sum()) if cfg.get("loss_reduction", "mean") == "sum" else 1
    total = (ce + z_loss) * scale + sum(aux.values())
    return total, {"loss": ce.item(), "z_loss": z_loss.item(),
                   **{k: v.item() for k, v in aux.items()}}


def language_modeling(engine, batch: Batch, cfg: dict
                      ) -> tuple[torch.Tensor, dict[str, float], int]:
    """The default objective: (inputs, labels) or, for packed documents, (inputs, labels,
    doc_ids) under training_loss."""
    inputs, labels, *doc_ids = (t.to(engine.device) for t in batch)
    loss, parts = training_loss(engine, inputs, labels, cfg, *doc_ids)
    return loss, parts, int((labels != -100).sum())


def compile_blocks(model: Olmo2 | Olmoe) -> None:
    """torch.compile each transformer block in place (as OLMo-core and torchtitan do): fuses the
    fp32 RMSNorms, RoPE and SwiGLU element-wise work around the matmuls, compiles one graph
    reused by every layer, and keeps parameter names, so checkpoints are unchanged."""
    for block in model.model.layers:
        block.compile()


def resolve_batch(cfg: dict, world_size: int) -> dict:
    """Set grad_accum from `global_batch_size` (instances per optimizer step, as OLMo's configs
    give it), so the same config trains the same batches on any number of processes."""
    if "global_batch_size" not in cfg:
        return cfg
    per_pass = cfg["micro_batch_size"] * world_size
    accum, rest = divmod(cfg["global_batch_size"], per_pass)
    if rest or accum < 1:
        raise ValueError(f"global_batch_size {cfg['global_batch_size']} is not a multiple of "
                         f"micro_batch_size {cfg['micro_batch_size']} × {world_size} processes")
    if cfg.get("grad_accum", accum) != accum:
        raise ValueError(f"grad_accum {cfg['grad_accum']} contradicts global_batch_size "
                         f"{cfg['global_batch_size']} on {world_size} processes (needs {accum})")
    return {**cfg, "grad_accum": accum}


def deepspeed_config(cfg: dict, world_size: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg["micro_batch_size"],
        "gradient_accumulation_steps": cfg["grad_accum"],
        "train_batch_size": cfg["micro_batch_size"] * cfg["grad_accum"] * world_size,
        "gradient_clipping": cfg["grad_clip"],
        "zero_optimization": {"stage": cfg["zero_stage"]},
        "bf16": {"enabled": cfg["precision"] == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def instance_batches(tokens: np.ndarray, seq_len: int, cfg: dict, seed: int, rank: int = 0,
                     world_size: int = 1, first_instance: int = 0) -> Callable[[int, int], Batch]:
    """OLMo's data order: the token array cut into `seq_len` instances, shuffled per epoch by a
    seeded permutation; each optimizer step takes the next global batch, split across ranks.
    `first_instance` continues an order another stage began (a grown model after its small
    one), so a staged run and a from-scratch run see the same instances."""
    n_instances = len(tokens) // seq_len
    if n_instances == 0:
        raise ValueError(f"{len(tokens)} tokens make no instance of {seq_len} tokens")
    micro = cfg["micro_batch_size"]
    per_step = micro * cfg["grad_accum"] * world_size
    orders: dict[int, np.ndarray] = {}

    def order(epoch: int) -> np.ndarray:
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n_instances)
        return orders[epoch]

    def batch(step: int, micro_step: int) -> Batch:
        start = first_instance + step * per_step + (micro_step * world_size + rank) * micro
        rows = []
        for position in range(start, start + micro):
            epoch, offset = divmod(position, n_instances)
            index = int(order(epoch)[offset])
            rows.append(np.asarray(tokens[index * seq_len : (index + 1) * seq_len], dtype=np.int64))
        data = torch.from_numpy(np.stack(rows))
        return data[:, :-1], data[:, 1:]

    return batch


def epoch_order(n_items: int, seed: int) -> Callable[[int, int], list[int]]:
    """`take(start, count)`: positions start … start+count−1 of an endless order of n_items
    items, each epoch a permutation seeded by (seed, epoch) — the order SFT examples, DPO
    pairs, RLVR prompts and prompted tasks are drawn in."""
    orders: dict[int, np.ndarray] = {}

    def take(start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, n_items)
            if epoch not in orders:
                orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n_items)
            out.append(int(orders[epoch][offset]))
        return out

    return take


def heldout_loss_fn(tokens: np.ndarray, seq_len: int, instances: int, batch_size: int
                    ) -> Callable[[torch.nn.Module, torch.device], float]:
    """OLMo's in-loop evaluation: the mean next-token loss on the first `instances` held-out
    instances (a fixed set, so points of one curve and of different runs compare)."""
    n = min(instances, len(tokens) // seq_len)
    if n == 0:
        raise ValueError(f"{len(tokens)} held-out tokens make no instance of {seq_len} tokens")
    data = torch.from_numpy(np.asarray(tokens[: n * seq_len], dtype=np.int64).reshape(n, seq_len))

    @torch.no_grad()
    def heldout_loss(model: torch.nn.Module, device) -> float:
        was_training = model.training
        model.eval()
        total = 0.0
        for rows in data.split(batch_size):
            rows = rows.to(device)
            logits = model(rows[:, :-1])
            total += causal_lm_loss(logits, rows[:, 1:]).item() * len(rows)
        model.train(was_training)
        return total / n

    return heldout_loss


# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12}


def peak_flops(device, cfg: dict) -> float | None:
    """Peak FLOP/s of one device for MFU: `peak_flops` from the config, else the data-sheet
    figure of a known GPU; None (no MFU) on a CPU without a configured figure."""
    if cfg.get("peak_flops"):
        return float(cfg["peak_flops"])
    if torch.cuda.is_available() and torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None


def _across_ranks(window: dict[str, float], tokens: int, world_size: int):
    """Metrics as the mean over data-parallel ranks, tokens as their sum (rank 0 logs them)."""
    if world_size == 1:
        return window, tokens
    import torch.distributed as dist

    names = sorted(window)
    values = torch.tensor([window[k] for k in names] + [tokens], dtype=torch.float64)
    dist.all_reduce(values)
    return ({k: float(v) / world_size for k, v in zip(names, values)}, int(values[-1]))


def step_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The complete intermediate checkpoints of a run, oldest first. Each is written as a
    directory that appears atomically, so a run killed mid-write leaves none half-done."""
    return sorted(Path(f"{checkpoint_dir}.steps").glob("step-*"))


@contextlib.contextmanager
def shared_atomic_dir(path: str | Path):
    """atomic_dir for all ranks of a job: every rank writes its part (DeepSpeed's checkpoint
    is collective) into one temporary directory that rank 0 renames when all are done."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-ranks"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    yield tmp
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    dist.barrier()


def _rank0() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def _save_step(engine, checkpoint_dir, step: int, state: dict, keep_last: int) -> None:
    with shared_atomic_dir(Path(f"{checkpoint_dir}.steps") / f"step-{step:06d}") as tmp:
        engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")  # model, AdamW, scheduler
        if _rank0():
            torch.save(torch.get_rng_state(), tmp / "rng.pt")
            write_json(tmp / "trainer_state.json", state)
    if _rank0():
        for old in step_checkpoints(checkpoint_dir)[:-keep_last]:
            shutil.rmtree(old)


# Settings a resumed run may change: how the global batch is split (micro-batch, accumulation,
# and with them the number of processes), compilation, logging of MFU and checkpoint cadence.
RESUMABLE_CHANGES = ("micro_batch_size", "grad_accum", "compile", "peak_flops",
                     "checkpoint_every", "keep_last")


def _global_batch(cfg: dict, world_size: int) -> int:
    return cfg["micro_batch_size"] * cfg["grad_accum"] * world_size


def _resume_point(checkpoint_dir, cfg: dict, world_size: int) -> tuple[Path, dict] | None:
    """The newest complete intermediate checkpoint and its trainer state, if this run may
    continue it: the same training config up to RESUMABLE_CHANGES and the same global batch,
    so the data order (a function of the step) continues exactly."""
    saved = step_checkpoints(checkpoint_dir)
    if not saved:
        return None
    latest = saved[-1]
    state = json.loads((latest / "trainer_state.json").read_text())
    fixed = lambda c: {k: v for k, v in c.items() if k not in RESUMABLE_CHANGES}  # noqa: E731
    changed = sorted(k for k in fixed(state["config"]) | fixed(cfg)
                     if state["config"].get(k) != cfg.get(k))
    if changed:
        raise ValueError(f"{latest} was written with another training config ({', '.join(changed)}"
                         f" differ); remove {latest.parent} to start over")
    before = _global_batch(state["config"], state["world_size"])
    if before != _global_batch(cfg, world_size):
        raise ValueError(f"{latest} was written with a global batch of {before} instances; "
                         f"choose micro_batch_size × grad_accum × processes = {before} to resume")
    return latest, state


def _universal_checkpoint(latest: Path) -> Path:
    """DeepSpeed's universal form of a step checkpoint (optimizer state per parameter, not per
    rank), made once by rank 0, so that ZeRO state written by N processes loads into M."""
    import torch.distributed as dist

    target = latest / "universal"
    if _rank0() and not target.exists():
        with atomic_dir(target) as tmp:
            converted = subprocess.run(
                [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                 str(latest / "deepspeed" / "state"), "--output_folder", str(tmp / "state"),
                 "--inject_missing_state"], capture_output=True, text=True)
            if converted.returncode:
                raise RuntimeError(f"converting {latest} to a universal checkpoint failed:\n"
                                   f"{converted.stderr[-2000:]}")
    if dist.is_initialized():
        dist.barrier()
    return target


def train(model: Olmo2, batches: Callable[[int, int], object], cfg: dict, seed: int,
          checkpoint_dir: str | Path, metrics_path: str | Path, tracker=None,
          start=None,
          heldout: Callable[[torch.nn.Module, torch.device], float | dict] | None = None,
          first_instance: int = 0, objective: Objective = language_modeling,
          lr_scale: dict[str, float] | None = None) -> dict:
    """Train for cfg['steps'] optimizer steps; write the checkpoint and a metrics CSV atomically.

    Every `checkpoint_every` steps the full engine state goes to `<checkpoint_dir>.steps/`
    (the newest `keep_last` are kept); a restarted run resumes from the newest one and, as the
    data order depends only on the step, continues exactly where the killed one stopped.

    `start` (a lmforge.grow.TrainingState) continues a grown training state: its moments,
    step count and per-parameter learning-rate scales (`lr_scale` sets such scales for a fresh
    run: parameter name → factor on lr). With `save_moments` the final
    checkpoint holds every parameter's moments (optimizer_moments.safetensors) for growth.
    `heldout` (see heldout_loss_fn) is evaluated every `eval_every` steps (a multiple of
    `log_every`) and at the end, as the metrics' valid_loss (or, returning a dict, as its
    columns). `objective` turns a micro-batch into the loss (default: language modeling).
    The trainer state records where the data order stops (`next_instance`), for a stage that
    continues it."""
    _ensure_distributed_env()
    if torch.cuda.is_available():  # one device per process on a node
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    import deepspeed

    from lmforge.plan import check_fits, device_memory_bytes, estimate, markdown

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    eval_every = cfg.get("eval_every", 0)
    if eval_every and heldout is None:
        raise ValueError("eval_every is set but this stage has no held-out tokens to evaluate")
    if eval_every % cfg["log_every"]:
        raise ValueError(f"eval_every {eval_every} is not a multiple of log_every "
                         f"{cfg['log_every']}")
    plan = estimate(model.cfg, cfg, world_size)
    log.info("plan:\n%s", markdown(plan))
    check_fits(plan, device_memory_bytes("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    if cfg.get("compile"):
        compile_blocks(model)
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl",
                               verbose=False)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg["weight_decay"], cfg.get("decay_embeddings", False),
                     cfg.get("decay_norms", True), cfg["lr"],
                     start.lr_scale if start is not None else lr_scale),
        lr=cfg["lr"], betas=(0.9, 0.95), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    resume = _resume_point(checkpoint_dir, cfg, world_size)
    # ZeRO shards the optimizer state per rank: another number of processes needs its
    # universal form. Without ZeRO every rank holds it whole and any world size loads it.
    reshard = (resume is not None and resume[1]["world_size"] != world_size
               and cfg["zero_stage"] > 0)
    ds_config = deepspeed_config(cfg, world_size)
    if reshard:
        ds_config["checkpoint"] = {"load_universal": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    rows, started, tokens_seen, first_step = [], time.perf_counter(), 0, 0
    window: dict[str, float] = {}
    window_tokens, window_start = 0, time.perf_counter()
    if start is not None and resume is None and start.moments:
        start_from_moments(engine, start.moments, start.step)
    if resume is not None:
        latest, resumed = resume
        engine_dir = _universal_checkpoint(latest) if reshard else latest / "deepspeed"
        engine.load_checkpoint(str(engine_dir), tag="state")
        torch.set_rng_state(torch.load(latest / "rng.pt"))
        log.info("resuming from %s (step %d, %d → %d processes)", latest, resumed["step"],
                 resumed["world_size"], world_size)
        first_step, rows, tokens_seen = resumed["step"], resumed["rows"], resumed["tokens_seen"]
        window, window_tokens = resumed["window"], resumed["window_tokens"]
    every = cfg.get("checkpoint_every", 0)
    peak = peak_flops(engine.device, cfg)
    for step in range(first_step, cfg["steps"]):
        for micro_step in range(cfg["grad_accum"]):
            loss, parts, trained_tokens = objective(engine, batches(step, micro_step), cfg)
            engine.backward(loss)
            engine.step()
            for name, value in parts.items():
                window[name] = window.get(name, 0.0) + value / cfg["grad_accum"]
            window_tokens += trained_tokens
        grad_norm = engine.get_global_grad_norm()  # before clipping
        window["grad_norm"] = window.get("grad_norm", 0.0) + (
            float(grad_norm) if grad_norm is not None else math.nan)
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
            n = (step % cfg["log_every"]) + 1
            window, window_tokens = _across_ranks(window, window_tokens, world_size)
            tokens_seen += window_tokens
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            row = {"step": step + 1, **{k: v / n for k, v in window.items()},
                   "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen,
                   "tokens_per_s": tokens_per_s,
                   "flops": tokens_seen * engine.module.flops_per_token(),
                   "mfu": engine.module.flops_per_token() * tokens_per_s / world_size / peak
                   if peak else None}
            if eval_every and ((step + 1) % eval_every == 0 or step + 1 == cfg["steps"]):
                scores = heldout(engine.module, engine.device)
                row.update(scores if isinstance(scores, dict) else {"valid_loss": scores})
            rows.append(row)
            log.info("step %(step)d loss %(loss).4f lr %(lr).2e tok/s %(tokens_per_s).0f", row)
            if tracker is not None and _rank0():
                tracker.log_metrics({f"train/{k}": v for k, v in row.items()
                                     if k != "step" and v is not None}, step=step + 1)
            window, window_tokens, window_start = {}, 0, time.perf_counter()
        if every and (step + 1) % every == 0 and step + 1 < cfg["steps"]:
            _save_step(engine, checkpoint_dir, step + 1, {
                "step": step + 1, "rows": rows, "tokens_seen": tokens_seen, "window": window,
                "window_tokens": window_tokens, "seed": seed, "config": cfg,
                "world_size": world_size},
                cfg.get("keep_last", 1))
    summary = {"steps": cfg["steps"], "resumed_from_step": first_step, "tokens_seen": tokens_seen,
               "final_loss": rows[-1]["loss"], "seconds": time.perf_counter() - started}
    summary.update({f"final_{k}": v for k, v in rows[-1].items() if k.startswith("valid_")})
    moments = full_moments(engine) if cfg.get("save_moments") else None
    with shared_atomic_dir(checkpoint_dir) as tmp:
        # Full engine state (optimizer moments, scheduler, step) for exact continuation.
        engine.save_checkpoint(str(tmp / "deepspeed"), tag="final")
        if _rank0():
            save_model(engine.module, tmp)
            if moments is not None:
                save_moments(moments, (start.step if start else 0) + cfg["steps"], tmp)
            next_instance = first_instance + cfg["steps"] * _global_batch(cfg, world_size)
            write_json(tmp / "trainer_state.json", {**summary, "seed": seed, "config": cfg,
                                                    "next_instance": next_instance,
                                                    "world_size": world_size})
    if _rank0():
        write_metrics(metrics_path, rows)
        shutil.rmtree(f"{checkpoint_dir}.steps", ignore_errors=True)
    return summary


METRIC_COLUMNS = ("step", "loss", "valid_loss", "z_loss", "load_balancing", "router_z",
                  "grad_norm", "lr", "tokens", "flops", "tokens_per_s", "mfu")


def write_metrics(path: str | Path, rows: list[dict]) -> None:
    """The common columns, then any a stage's objective adds (DPO's rewards, RLVR's...)."""
    extra = dict.fromkeys(k for row in rows for k in row if k not in METRIC_COLUMNS)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*METRIC_COLUMNS, *extra], restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_loss(metrics_paths: dict[str, str | Path], out_path: str | Path) -> None:
    """One loss-curve figure for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, path in metrics_paths.items():
        with open(path) as handle:
            data = list(csv.DictReader(handle))
        ax.plot([int(r["step"]) for r in data], [float(r["loss"]) for r in data], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    save_figure(fig, out_path)

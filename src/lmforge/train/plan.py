"""Memory and compute plan of a training run, before any work: `lmforge plan` prints it and the
trainer refuses a run that cannot fit the device.

Memory per device (mixed-precision AdamW as DeepSpeed keeps it, Rajbhandari et al. 2020):
weights in the training dtype, fp32 master weights when that dtype is bf16, gradients in the
training dtype, two fp32 AdamW moments; ZeRO stage 1 shards the optimizer state (master weights
and moments) over the data-parallel ranks, stage 2 also the gradients, stage 3 also the weights
(plus the layers it gathers whole while they compute: at most 1e9 parameters live).

Activations are not taken from a textbook formula (Korthikanti et al.'s 34·s·b·h bytes per layer
is half of what an OLMo 2 block keeps with its fp32 norms and full-width QK-norm): one block of
the model's real shape runs a short sequence on the CPU in the training dtype and every tensor
autograd saves for backward is counted (eager PyTorch; compiled blocks keep less). With a fused
attention kernel that is linear in the sequence length. The head adds the final norm and, per
vocabulary entry and token, the fp32 logits the loss keeps plus what the start of backward holds
at once: three fp32 temporaries of the logsumexp gradient and the logits' gradient in the
training dtype. On an H200 this predicts the measured peak of OLMo 2 1B (84.0 vs 84.3 GiB eager,
bf16, 16k tokens per micro-batch) and of the OLMoE-1B-7B shape (36.9 vs 36.7 GiB). With the
loss head in chunks (`loss_chunk_tokens`) the head's vocabulary-sized terms are one chunk's;
with `activation_checkpointing` a block keeps only its input, and one block's activations
exist at a time while backward recomputes them.
FLOPs per step: the model's training FLOPs per token times the tokens of one global batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from lmforge.io.storage import InputError
from lmforge.model.olmo2 import ModelConfig
from lmforge.runner import arg, command, json_object
from lmforge.train.config import TrainConfig, resolve_batch
from lmforge.train.stages import (
    GROWN_STAGES,
    STAGES,
    merged_config,
    stage_train_config,
    world_size_of,
)

GIB = 1024**3
ZERO3_LIVE_PARAMETERS = 10**9


def estimate(model_cfg: ModelConfig, train_cfg: TrainConfig | Mapping, world_size: int = 1
             ) -> dict:
    train_cfg = TrainConfig.of(train_cfg)
    from lmforge.model.hf import build

    with torch.device("meta"):
        model = build(model_cfg)
    params = model.num_params(non_embedding=False)
    bf16 = train_cfg.precision == "bf16"
    width = 2 if bf16 else 4
    stage = train_cfg.zero_stage
    shard = lambda stage_from: world_size if stage >= stage_from else 1  # noqa: E731
    weights = params * width / shard(3)
    if stage == 3:  # the layers gathered whole around the one computing (DeepSpeed's default
        # stage3_max_live_parameters, 1e9)
        weights += min(params, ZERO3_LIVE_PARAMETERS) * width
    grads = params * width / shard(2)
    optimizer = params * ((4 if bf16 else 0) + 8) / shard(1)
    # A DPO micro-batch holds both sides of each pair; RLVR keeps the frozen reference model
    # beside the policy.
    rows = train_cfg.micro_batch_size * (2 if train_cfg.loss_type is not None else 1)
    if train_cfg.samples_per_prompt is not None:
        weights += params * width
    tokens = min(model_cfg.max_seq_len, train_cfg.max_seq_len or model_cfg.max_seq_len) * rows
    dtype = torch.bfloat16 if bf16 else torch.float32
    block = block_activation_bytes_per_token(model_cfg, dtype)
    if train_cfg.activation_checkpointing:  # every block's input, one block's activations
        blocks = tokens * (model_cfg.n_layers * model_cfg.d_model * width + block)
    else:
        blocks = tokens * model_cfg.n_layers * block
    activations = blocks + head_bytes(model_cfg, tokens, width, train_cfg.loss_chunk_tokens)
    tokens_per_step = tokens * train_cfg.grad_accum * world_size
    return {
        "parameters": params,
        "active_parameters": model.num_params(non_embedding=False, active=True)
        if hasattr(model.cfg, "n_experts") else params,
        "weights_gib": weights / GIB, "gradients_gib": grads / GIB,
        "optimizer_gib": optimizer / GIB, "activations_gib": activations / GIB,
        "total_gib": (weights + grads + optimizer + activations) / GIB,
        "tokens_per_step": tokens_per_step,
        "flops_per_step": model.flops_per_token() * tokens_per_step,
    }


def head_bytes(model_cfg: ModelConfig, tokens: int, width: int, chunk_tokens: int) -> int:
    """The final norm's saved tensors, and the loss head's: eager, per token and vocabulary
    entry the fp32 logits plus three fp32 temporaries of backward and the logits' gradient;
    in chunks, one chunk's fp32 logits, their fp32 gradient and its copy in the training dtype,
    plus the hidden states' gradient (kept from forward) and the weight's fp32 gradient sum."""
    norm = tokens * model_cfg.d_model * (4 + 2 * width)
    vocab = model_cfg.vocab_size
    if not chunk_tokens:
        return norm + tokens * vocab * (4 + 3 * 4 + width)
    chunk = min(chunk_tokens, tokens)
    return (norm + chunk * vocab * (4 + 4 + width) + tokens * model_cfg.d_model * width
            + vocab * model_cfg.d_model * (4 + width))


def block_activation_bytes_per_token(model_cfg: ModelConfig, dtype: torch.dtype,
                                     tokens: int = 64) -> float:
    """Bytes autograd keeps for backward per token in one block, counted on the autograd graph
    of one block of the real shape (weights allocated, not initialised: only shapes matter)."""
    from lmforge.model.olmo2 import Block, rope_cache
    from lmforge.model.olmoe import MoEBlock, MoEConfig

    with torch.device("meta"):
        block = (MoEBlock if isinstance(model_cfg, MoEConfig) else Block)(model_cfg)
    block = block.to_empty(device="cpu").to(dtype)
    cos, sin = (t.to(dtype) for t in rope_cache(tokens, model_cfg.d_model // model_cfg.n_heads,
                                                 model_cfg.rope_theta))
    shared = {t.untyped_storage().data_ptr() for t in (*block.parameters(), cos, sin)}
    saved: dict[int, int] = {}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in shared:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.zeros(1, tokens, model_cfg.d_model, dtype=dtype, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        block(x, cos, sin)
    return sum(saved.values()) / tokens


def device_memory_bytes(device) -> int:
    """Memory of one training device: the GPU's, or this machine's RAM on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(plan: dict, memory_bytes: int) -> None:
    if plan["total_gib"] * GIB > memory_bytes:
        raise InputError(
            f"the run needs about {plan['total_gib']:.1f} GiB per device (weights "
            f"{plan['weights_gib']:.1f}, gradients {plan['gradients_gib']:.1f}, optimizer "
            f"{plan['optimizer_gib']:.1f}, activations {plan['activations_gib']:.1f}) but the "
            f"device has {memory_bytes / GIB:.1f} GiB: lower micro_batch_size, use bf16, a "
            "higher zero_stage or more devices")


def markdown(plan: dict) -> str:
    rows = [("parameters", f"{plan['parameters'] / 1e9:.3f} B"),
            ("active parameters per token", f"{plan['active_parameters'] / 1e9:.3f} B")]
    rows += [(name, f"{plan[f'{name}_gib']:.2f} GiB")
             for name in ("weights", "gradients", "optimizer", "activations", "total")]
    rows += [("tokens per step", f"{plan['tokens_per_step']:,}"),
             ("FLOPs per step", f"{plan['flops_per_step']:.3e}")]
    return "\n".join(["| per device | estimate |", "| --- | ---: |"]
                     + [f"| {k} | {v} |" for k, v in rows]) + "\n"


H100_BF16_FLOPS = 989e12


def stage_model_config(config: dict, grown: bool) -> ModelConfig:
    """The model a workflow stage trains: config["model"], or its size after `grow`."""
    model, grow = config["model"], config["grow"]
    layers = grow["factor"] if grown and grow["operator"] == "depth" else 1
    width = grow["factor"] if grown and grow["operator"] == "width" else 1
    return ModelConfig(**{**model, "n_layers": model["n_layers"] * layers,
                          "d_model": model["d_model"] * width,
                          "n_heads": model["n_heads"] * width,
                          "mlp_hidden": model["mlp_hidden"] * width,
                          "vocab_size": config["tokenizer"]["vocab_size"]})


def workflow_plan(config: dict, mfu: float = 0.4) -> list[dict]:
    """Per training stage: processes, batch, tokens, FLOPs, memory per device and the time it
    takes at `mfu` of the devices' peak (H100/H200 bf16 for GPU jobs unless peak_flops)."""

    rows = []
    for stage, (_, layout) in STAGES.items():
        launch = config["launch"][layout]
        world = world_size_of(config, stage)
        cfg = resolve_batch(stage_train_config(config, stage), world)
        plan = estimate(stage_model_config(config, stage in GROWN_STAGES), cfg, world)
        peak = cfg.peak_flops or (H100_BF16_FLOPS if launch["gpus_per_node"] else None)
        flops = plan["flops_per_step"] * cfg.steps
        hours = flops / (world * peak * mfu) / 3600 if peak else None
        rows.append({"stage": stage, "nodes": launch["nodes"], "processes": world,
                     "gpus": launch["nodes"] * launch["gpus_per_node"], "steps": cfg.steps,
                     "gpu_memory_gib": launch.get("gpu_memory_gib", 80)
                     if launch["gpus_per_node"] else None,
                     "grad_accum": cfg.grad_accum,
                     "tokens": plan["tokens_per_step"] * cfg.steps, "flops": flops,
                     "hours": hours,
                     "gpu_hours": hours * launch["nodes"] * launch["gpus_per_node"]
                     if hours else None, **plan})
    return rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def workflow_markdown(rows: list[dict], mfu: float) -> str:
    def number(value, fmt):
        return "–" if value is None else format(value, fmt)

    lines = ["| stage | params | nodes × procs | GPUs | steps | accum | tokens | FLOPs | "
             f"hours at {mfu:.0%} MFU | GPU-hours | GiB per device |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {_count(r['parameters'])} | {r['nodes']} × "
            f"{r['processes'] // r['nodes']} | {r['gpus']} | {r['steps']:,} | {r['grad_accum']} "
            f"| {r['tokens']:.3e} | {r['flops']:.3e} | {number(r['hours'], ',.1f')} | "
            f"{number(r['gpu_hours'], ',.0f')} | {r['total_gib']:.1f} |")
    return "\n".join(lines) + "\n"


def staged_plan(config: dict, target_loss: float) -> str:
    """The staged-training schedule the scaling law gives for the config's pretrain → grow
    sizes (Kaplan's non-embedding parameters, the pretraining batch), as markdown."""
    from lmforge.model.hf import build
    from lmforge.train.grow import stage_schedule

    sizes = []
    for grown in (False, True):
        with torch.device("meta"):
            model = build(stage_model_config(config, grown))
        sizes.append(sum(p.numel() for p in model.model.layers.parameters()))
    pretrain = config["pretrain"]
    batch = pretrain.get("global_batch_size") or pretrain["micro_batch_size"] * pretrain[
        "grad_accum"]
    schedule = stage_schedule(sizes, batch * config["model"]["max_seq_len"], target_loss)
    lines = [f"Staged training to loss {target_loss} (Kaplan et al. L(N, S), batch "
             f"{batch} × {config['model']['max_seq_len']} tokens):", "",
             "| stage | non-embedding params | from step | to step | loss there | FLOPs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for index, stage in enumerate(schedule["stages"]):
        lines.append(f"| {index + 1} | {_count(int(stage['parameters']))} | "
                     f"{stage['start_step']:,.0f} | {stage['end_step']:,.0f} | "
                     f"{stage['loss']:.3f} | {stage['flops']:.3e} |")
    lines += ["", f"staged {schedule['staged_flops']:.3e} FLOPs vs {schedule['baseline_flops']:.3e}"
              f" for the last size from scratch: {schedule['saving']:.1%} saved"]
    if len(schedule["stages"]) < len(sizes):
        lines.append("the target is reached before growing pays off: the larger size is not "
                     "needed for this loss")
    return "\n".join(lines) + "\n"


@command("plan", arg("--preset", default=None), arg("--checkpoint", default=None),
         arg("--cfg", type=json_object, default=None), arg("--configfile", nargs="+", default=None),
         arg("--mfu", type=float, default=0.4), arg("--target-loss", type=float, default=None),
         arg("--world-size", type=int, default=1),
         arg("--device-memory-gib", type=float, default=None), tracked=False)
def plan_command(args, job) -> None:
    """Memory per device and FLOPs of a training run, or of every training stage of a workflow
    config (--configfile); error if it cannot fit."""
    from lmforge.model.hf import preset_config

    if args.configfile:
        return _plan_workflow(args)
    if (args.preset is None) == (args.checkpoint is None) or args.cfg is None:
        raise ValueError("give --cfg and exactly one of --preset or --checkpoint, or "
                         "--configfile")
    if args.preset:
        model_cfg = preset_config(args.preset)
    else:
        from lmforge.model.checkpoint import load_model

        model_cfg = load_model(args.checkpoint).cfg
    plan = estimate(model_cfg, resolve_batch(args.cfg, args.world_size), args.world_size)
    print(markdown(plan), end="")
    memory = (args.device_memory_gib * GIB if args.device_memory_gib
              else device_memory_bytes("cuda" if torch.cuda.is_available() else "cpu"))
    check_fits(plan, int(memory))


def _plan_workflow(args) -> None:
    base = Path(__file__).resolve().parents[3] / "config" / "config.yaml"
    config = merged_config(args.configfile, base)
    rows = workflow_plan(config, args.mfu)
    print(workflow_markdown(rows, args.mfu), end="")
    if args.target_loss:
        print("\n" + staged_plan(config, args.target_loss), end="")
    for row in rows:
        memory = args.device_memory_gib or row["gpu_memory_gib"]
        if memory is None:  # a CPU job: the trainer checks the machine it runs on
            continue
        try:
            check_fits(row, int(memory * GIB))
        except InputError as err:
            raise InputError(f"{row['stage']}: {err}") from None
        print(f"{row['stage']}: fits a {memory:g} GiB GPU")

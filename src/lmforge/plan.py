"""Memory and compute plan of a training run, before any work: `lmforge plan` prints it and the
trainer refuses a run that cannot fit the device.

Memory per device (mixed-precision AdamW as DeepSpeed keeps it, Rajbhandari et al. 2020):
weights in the training dtype, fp32 master weights when that dtype is bf16, gradients in the
training dtype, two fp32 AdamW moments; ZeRO stage 1 shards the optimizer state (master weights
and moments) over the data-parallel ranks, stage 2 also the gradients, stage 3 also the weights.
Activations per micro-batch follow Korthikanti et al. 2022 without recomputation but with a
fused attention kernel (PyTorch's scaled_dot_product_attention keeps no s×s score matrix, which
removes their 5·a·s/h term): s·b·h·34 bytes per layer at 16 bits, doubled for fp32, plus the fp32
logits and their gradient. FLOPs per step: the model's training
FLOPs per token times the tokens of one global batch.
"""

from __future__ import annotations

import os

import torch

from lmforge.model import ModelConfig
from lmforge.storage import InputError

GIB = 1024**3


def estimate(model_cfg: ModelConfig, train_cfg: dict, world_size: int = 1) -> dict:
    from lmforge.hf import build

    with torch.device("meta"):
        model = build(model_cfg)
    params = model.num_params(non_embedding=False)
    bf16 = train_cfg["precision"] == "bf16"
    width = 2 if bf16 else 4
    stage = train_cfg["zero_stage"]
    shard = lambda stage_from: world_size if stage >= stage_from else 1  # noqa: E731
    weights = params * width / shard(3)
    grads = params * width / shard(2)
    optimizer = params * ((4 if bf16 else 0) + 8) / shard(1)
    s, b, h = model_cfg.max_seq_len, train_cfg["micro_batch_size"], model_cfg.d_model
    activations = model_cfg.n_layers * s * b * h * 34 * (1 if bf16 else 2)
    logits = s * b * model_cfg.vocab_size * 4 * 2  # fp32 logits and their gradient
    tokens_per_step = s * b * train_cfg["grad_accum"] * world_size
    return {
        "parameters": params,
        "active_parameters": model.num_params(non_embedding=False, active=True)
        if hasattr(model.cfg, "n_experts") else params,
        "weights_gib": weights / GIB, "gradients_gib": grads / GIB,
        "optimizer_gib": optimizer / GIB, "activations_gib": (activations + logits) / GIB,
        "total_gib": (weights + grads + optimizer + activations + logits) / GIB,
        "tokens_per_step": tokens_per_step,
        "flops_per_step": model.flops_per_token() * tokens_per_step,
    }


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

"""The optimizer side of training: the schedule, parameter groups, AdamW moments a grown
model continues, batch resolution and the DeepSpeed config."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch

from lmforge.model.olmo2 import Olmo2
from lmforge.model.olmoe import Olmoe
from lmforge.train.config import TrainConfig

log = logging.getLogger(__name__)


def lr_lambda(step: int, cfg: TrainConfig | Mapping) -> float:
    """Linear warm-up, then cosine (OLMo 2 pretraining) or linear (OLMo 2 mid-training anneal)
    decay to min_lr_ratio × lr over `schedule_steps` (default: this stage's steps). A stage
    that continues an earlier one's schedule (a grown model) starts at `schedule_offset` and
    may re-warm linearly over `rewarm_steps`. With a fixed global batch, steps measure tokens."""
    cfg = TrainConfig.of(cfg)
    rewarm = cfg.rewarm_steps
    factor = min(1.0, (step + 1) / rewarm) if rewarm else 1.0
    step += cfg.schedule_offset
    warmup, total = cfg.warmup_steps, cfg.total_schedule_steps
    if step < warmup:
        return factor * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return factor * (floor + (1 - floor) * (1 - progress))
    return factor * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: Olmo2 | Olmoe, weight_decay: float, decay_embeddings: bool = False,
                 decay_norms: bool = True, lr: float | None = None,
                 lr_scale: dict[str, float] | None = None) -> list[dict]:
    """Weight decay on every weight except the embeddings (`decay_embeddings`), norms included
    (`decay_norms`): OLMo 2's `decay_embeddings: false`, `decay_norm_and_bias: true`. A grown
    model's `lr_scale` (lmforge.train.grow) splits the groups further: lr × scale, decay ÷ scale."""
    if lr_scale:
        from lmforge.train.grow import scaled_param_groups

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
        # ZeRO 1/2/3 and bf16 master weights: every rank takes part for every parameter,
        # also where it holds no slice of it (its _hp_mapping is None then).
        if hasattr(param, "_hp_mapping") or hasattr(param, "ds_id"):
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
    elif engine.zero_optimization_partition_weights():
        # ZeRO-3 also creates its flat fp32 state on the first step: create it, fill slices.
        for flat in optimizer.fp32_partitioned_groups_flat:
            inner.state[flat] = {"step": torch.tensor(float(step)),
                                 **{k: torch.zeros_like(flat) for k in MOMENTS}}
        for name, param in params.items():
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, moments[name][key].to(param.device), key)
    elif isinstance(inner, torch.optim.Optimizer) and inner is optimizer:
        for name, param in params.items():
            inner.state[param] = {"step": torch.tensor(float(step)),
                                  **{k: moments[name][k].to(param.device).clone()
                                     for k in MOMENTS}}
    else:
        raise ValueError("a grown optimizer state needs zero_stage 1, 2 or 3, or zero_stage 0 "
                         "in fp32")


def compile_blocks(model: Olmo2 | Olmoe) -> None:
    """torch.compile each transformer block in place (as OLMo-core and torchtitan do): fuses the
    fp32 RMSNorms, RoPE and SwiGLU element-wise work around the matmuls, compiles one graph
    reused by every layer, and keeps parameter names, so checkpoints are unchanged."""
    for block in model.model.layers:
        block.compile()


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """DeepSpeed's config for a stage. Under bf16, gradients are accumulated over micro-batches
    and reduced over ranks in fp32, as OLMo does (bf16 sums lose the small micro-batch
    contributions of a long accumulation); DeepSpeed does that with ZeRO ≥ 1 only."""
    config = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        if cfg.zero_stage == 0:
            raise ValueError("precision bf16 needs zero_stage ≥ 1: DeepSpeed accumulates and "
                             "reduces gradients in fp32 only under ZeRO (stage 1 on one process "
                             "holds what stage 0 does)")
        config.update(data_types={"grad_accum_dtype": cfg.grad_accum_dtype},
                      communication_data_type=cfg.grad_accum_dtype)
    return config

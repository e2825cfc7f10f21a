"""The `train` section every training stage shares (pretrain, grow, SFT, DPO, RLVR, the
promptable, vision and mid-training runs), with every default in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lmforge.io.storage import InputError
from lmforge.settings import Section


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION = "train"

    steps: int
    micro_batch_size: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    zero_stage: int
    precision: str
    log_every: int
    # Instances per optimizer step; grad_accum follows from it and the world size.
    global_batch_size: int | None = None
    grad_accum: int | None = None
    checkpoint_every: int = 0
    keep_last: int = 1
    schedule: str = "cosine"
    schedule_steps: int | None = None  # None: this stage's steps
    schedule_offset: int = 0
    rewarm_steps: int = 0
    z_loss: float = 0.0
    decay_embeddings: bool = False
    decay_norms: bool = True
    save_moments: bool = False
    loss_reduction: str = "mean"
    packing: bool = True
    lm_lr_scale: float = 1.0
    eval_every: int = 0
    eval_instances: int = 64
    compile: bool = False
    # The loss head in chunks of this many tokens (lmforge.model.olmo2._ChunkedHeadLoss);
    # 0: every token's logits at once.
    loss_chunk_tokens: int = 0
    # Recompute each block's activations in backward instead of keeping them.
    activation_checkpointing: bool = False
    # Under bf16: the dtype gradients are accumulated and reduced in (fp32 as in OLMo; bf16
    # only to measure what fp32 buys).
    grad_accum_dtype: str = "fp32"
    peak_flops: float | None = None
    # DPO
    max_seq_len: int | None = None  # None: the model's context
    loss_type: str | None = None
    beta: float | None = None  # DPO's β, or RLVR's KL penalty
    # RLVR
    samples_per_prompt: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    correct_reward: float | None = None
    unterminated_reward: float | None = None

    @property
    def total_schedule_steps(self) -> int:
        return self.schedule_steps or self.steps

    def micro_batch_start(self, step: int, micro_step: int, rank: int, world_size: int) -> int:
        """The first example of a rank's micro-batch in a stage's example order."""
        return ((step * self.grad_accum * world_size + micro_step * world_size + rank)
                * self.micro_batch_size)


def resolve_batch(cfg: TrainConfig | Mapping, world_size: int) -> TrainConfig:
    """Set grad_accum from `global_batch_size` (instances per optimizer step, as OLMo's configs
    give it), so the same config trains the same batches on any number of processes."""
    cfg = TrainConfig.of(cfg)
    if cfg.global_batch_size is None:
        if cfg.grad_accum is None:
            raise InputError("train: give grad_accum or global_batch_size")
        return cfg
    per_pass = cfg.micro_batch_size * world_size
    accum, rest = divmod(cfg.global_batch_size, per_pass)
    if rest or accum < 1:
        raise ValueError(f"global_batch_size {cfg.global_batch_size} is not a multiple of "
                         f"micro_batch_size {cfg.micro_batch_size} × {world_size} processes")
    if cfg.grad_accum not in (None, accum):
        raise ValueError(f"grad_accum {cfg.grad_accum} contradicts global_batch_size "
                         f"{cfg.global_batch_size} on {world_size} processes (needs {accum})")
    return cfg.replace(grad_accum=accum)

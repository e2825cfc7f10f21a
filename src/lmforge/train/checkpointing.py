"""Step checkpoints of a DeepSpeed run: written atomically, the last few kept, and resumed
only where the config allows it (universal checkpoints across a different world size)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from lmforge.io.storage import atomic_dir, write_json
from lmforge.train.config import TrainConfig
from lmforge.train.optim import MOMENTS

log = logging.getLogger(__name__)


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


def is_rank0() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def save_step(engine, checkpoint_dir, step: int, state: dict, keep_last: int) -> None:
    with shared_atomic_dir(Path(f"{checkpoint_dir}.steps") / f"step-{step:06d}") as tmp:
        engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")  # model, AdamW, scheduler
        if is_rank0():
            torch.save(torch.get_rng_state(), tmp / "rng.pt")
            write_json(tmp / "trainer_state.json", state)
    if is_rank0():
        for old in step_checkpoints(checkpoint_dir)[:-keep_last]:
            shutil.rmtree(old)


# Settings a resumed run may change: how the global batch is split (micro-batch, accumulation,
# and with them the number of processes), compilation, logging of MFU and checkpoint cadence.
RESUMABLE_CHANGES = ("micro_batch_size", "grad_accum", "compile", "peak_flops",
                     "checkpoint_every", "keep_last")


def global_batch(cfg: TrainConfig, world_size: int) -> int:
    return cfg.micro_batch_size * cfg.grad_accum * world_size


def resume_point(checkpoint_dir, cfg: TrainConfig, world_size: int) -> tuple[Path, dict] | None:
    """The newest complete intermediate checkpoint and its trainer state, if this run may
    continue it: the same training config up to RESUMABLE_CHANGES and the same global batch,
    so the data order (a function of the step) continues exactly."""
    saved = step_checkpoints(checkpoint_dir)
    if not saved:
        return None
    latest = saved[-1]
    state = json.loads((latest / "trainer_state.json").read_text())
    fixed = lambda c: {k: v for k, v in c.items() if k not in RESUMABLE_CHANGES}  # noqa: E731
    current = cfg.to_dict()
    changed = sorted(k for k in fixed(state["config"]) | fixed(current)
                     if state["config"].get(k) != current.get(k))
    if changed:
        raise ValueError(f"{latest} was written with another training config ({', '.join(changed)}"
                         f" differ); remove {latest.parent} to start over")
    saved_cfg = state["config"]
    before = saved_cfg["micro_batch_size"] * saved_cfg["grad_accum"] * state["world_size"]
    if before != global_batch(cfg, world_size):
        raise ValueError(f"{latest} was written with a global batch of {before} instances; "
                         f"choose micro_batch_size × grad_accum × processes = {before} to resume")
    return latest, state


def universal_checkpoint(latest: Path) -> Path:
    """DeepSpeed's universal form of a step checkpoint (optimizer state per parameter, not per
    rank), made once by rank 0, so that ZeRO state written by N processes loads into M."""
    import torch.distributed as dist

    target = latest / "universal"
    if is_rank0() and not target.exists():
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


def universal_state(universal: Path, model: torch.nn.Module) -> tuple[dict, dict]:
    """A universal checkpoint's whole fp32 weights and AdamW moments by parameter name (the
    converter writes each ZeRO-3 tensor flat)."""
    zero = universal / "state" / "zero"
    weights, moments = {}, {}
    for name, param in model.named_parameters():
        state = {key: torch.load(zero / name / f"{key}.pt", weights_only=True).view(param.shape)
                 for key in ("fp32", *MOMENTS)}
        weights[name] = state.pop("fp32")
        moments[name] = state
    return weights, moments

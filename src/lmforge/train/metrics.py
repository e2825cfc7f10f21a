"""Training metrics: the peak FLOPs of the device for MFU, the metrics CSV and loss plots."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from lmforge.io.storage import InputError, atomic_path, save_figure
from lmforge.train.config import TrainConfig

log = logging.getLogger(__name__)
# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12}


def peak_flops(device, cfg: TrainConfig) -> float | None:
    """Peak FLOP/s of one device for MFU: `peak_flops` from the config, else the data-sheet
    figure of a known GPU; None (no MFU) on a CPU without a configured figure."""
    import torch  # here: the report commands read metrics without loading torch

    if cfg.peak_flops:
        return float(cfg.peak_flops)
    if torch.cuda.is_available() and torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None


METRIC_COLUMNS = ("step", "loss", "valid_loss", "z_loss", "load_balancing", "router_z",
                  "grad_norm", "lr", "tokens", "flops", "tokens_per_s", "mfu")


def write_metrics(path: str | Path, rows: list[dict]) -> None:
    """The common columns, then any a stage's objective adds (DPO's rewards, RLVR's...)."""
    extra = dict.fromkeys(k for row in rows for k in row if k not in METRIC_COLUMNS)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*METRIC_COLUMNS, *extra], restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_metrics(path: str | Path):
    """A stage's metrics CSV as a polars frame, a row per logged step (empty cells: nulls)."""
    import polars as pl

    try:
        frame = pl.read_csv(path, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise InputError(f"{path}: not a readable training metrics file ({err})") from None
    missing = {"step", "loss", "tokens", "flops"} - set(frame.columns)
    if missing or frame.is_empty():
        raise InputError(f"{path}: a training metrics file needs rows and the columns "
                         f"step, loss, tokens, flops (missing: {sorted(missing)})")
    return frame


def plot_loss(metrics_paths: dict[str, str | Path], out_path: str | Path) -> None:
    """One loss-curve figure for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, path in metrics_paths.items():
        frame = read_metrics(path)
        ax.plot(frame["step"].to_list(), frame["loss"].to_list(), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    save_figure(fig, out_path)

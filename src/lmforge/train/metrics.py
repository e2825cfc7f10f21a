"""Training metrics: the peak FLOPs of the device for MFU, the metrics CSV and loss plots."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from lmforge.io.storage import atomic_path, save_figure
from lmforge.train.config import TrainConfig

log = logging.getLogger(__name__)
# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12}


def peak_flops(device, cfg: TrainConfig) -> float | None:
    """Peak FLOP/s of one device for MFU: `peak_flops` from the config, else the data-sheet
    figure of a known GPU; None (no MFU) on a CPU without a configured figure."""
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

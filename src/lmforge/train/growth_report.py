"""Staged training against the from-scratch baseline of the grown size: held-out loss per
training FLOP, and the compute each needs to reach the other's final loss (Shen et al. 2022
report up to 22% saved at equal loss).

Both runs see the same instances (the grown stage continues the small one's data order) and
are scored on the same held-out instances every `eval_every` steps (metrics' valid_loss);
FLOPs are 6 × non-embedding parameters (the output head included) + attention per token.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.io.storage import InputError, save_figure, write_json, write_text
from lmforge.runner import OUT_JSON, OUT_MD, arg, command
from lmforge.train.metrics import read_metrics

Curve = list[tuple[float, float]]


def read_curve(path: str | Path) -> tuple[Curve, dict]:
    """(cumulative FLOPs, held-out loss) at each evaluation, and the run's totals."""
    import polars as pl

    frame = read_metrics(path)
    if "valid_loss" not in frame.columns or frame["valid_loss"][-1] is None:
        raise InputError(f"{path}: no held-out loss at the last step; the stage needs "
                         "eval_every in its training config")
    evals = frame.filter(pl.col("valid_loss").is_not_null())
    curve = list(zip(evals["flops"].cast(pl.Float64).to_list(),
                     evals["valid_loss"].cast(pl.Float64).to_list(), strict=True))
    last = frame.row(-1, named=True)
    return curve, {"steps": int(last["step"]), "tokens": int(last["tokens"]),
                   "flops": float(last["flops"]), "final_loss": float(last["valid_loss"])}


def flops_to_reach(curve: Curve, loss: float) -> float | None:
    """FLOPs where the curve first reaches `loss`, interpolated linearly between evaluations;
    None if it never does."""
    previous = None
    for flops, value in curve:
        if value <= loss:
            if previous is None or previous[1] == value:
                return flops
            f0, l0 = previous
            return f0 + (flops - f0) * (l0 - loss) / (l0 - value)
        previous = (flops, value)
    return None


def compare(small_csv, grown_csv, baseline_csv) -> dict:
    small, small_run = read_curve(small_csv)
    grown, grown_run = read_curve(grown_csv)
    baseline, baseline_run = read_curve(baseline_csv)
    staged = small + [(small_run["flops"] + f, loss) for f, loss in grown]
    staged_run = {"steps": small_run["steps"] + grown_run["steps"],
                  "tokens": small_run["tokens"] + grown_run["tokens"],
                  "flops": small_run["flops"] + grown_run["flops"],
                  "final_loss": grown_run["final_loss"]}
    if staged_run["tokens"] != baseline_run["tokens"]:
        raise InputError(f"the staged run trained {staged_run['tokens']} tokens, the baseline "
                         f"{baseline_run['tokens']}: they are not comparable")
    at_target = flops_to_reach(staged, baseline_run["final_loss"])
    baseline_at_staged = flops_to_reach(baseline, staged_run["final_loss"])
    return {
        "runs": {"small": small_run, "grown": grown_run, "staged": staged_run,
                 "baseline": baseline_run},
        "curves": {"staged": staged, "baseline": baseline, "growth_flops": small_run["flops"]},
        "target_loss": baseline_run["final_loss"],
        "staged_flops_to_target": at_target,
        # Staged compute over baseline compute, each at the loss the other run ends with.
        "flops_ratio": at_target / baseline_run["flops"] if at_target is not None else None,
        "baseline_flops_to_staged_final": baseline_at_staged,
        "flops_ratio_at_staged_final": (staged_run["flops"] / baseline_at_staged
                                        if baseline_at_staged else None),
    }


def markdown(result: dict) -> str:
    runs = result["runs"]
    names = {"small": "small model (pretrain)", "grown": "grown model (grow)",
             "staged": "staged run (both)", "baseline": "grown size from scratch (baseline)"}
    lines = ["| run | steps | tokens | training FLOPs | final held-out loss |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, label in names.items():
        run = runs[key]
        lines.append(f"| {label} | {run['steps']} | {run['tokens']:,} | {run['flops']:.3e} | "
                     f"{run['final_loss']:.4f} |")
    lines.append("")
    target = result["target_loss"]
    if result["flops_ratio"] is not None:
        lines.append(
            f"The staged run reaches the baseline's final held-out loss {target:.4f} after "
            f"{result['staged_flops_to_target']:.3e} FLOPs: {result['flops_ratio']:.3f} × the "
            f"baseline's {runs['baseline']['flops']:.3e} ({1 - result['flops_ratio']:.1%} "
            "saved).")
    else:
        lines.append(
            f"The staged run does not reach the baseline's final held-out loss {target:.4f}: "
            f"it ends at {runs['staged']['final_loss']:.4f} after {runs['staged']['flops']:.3e} "
            f"FLOPs ({runs['staged']['flops'] / runs['baseline']['flops']:.3f} × the baseline's "
            "compute).")
    if result["flops_ratio_at_staged_final"] is not None:
        lines.append(
            f"At the staged run's final loss {runs['staged']['final_loss']:.4f} the baseline "
            f"had spent {result['baseline_flops_to_staged_final']:.3e} FLOPs: staged / "
            f"baseline compute {result['flops_ratio_at_staged_final']:.3f}.")
    return "\n".join(lines) + "\n"


def plot(result: dict, out_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    small = [p for p in curves["staged"] if p[0] <= curves["growth_flops"]]
    grown = [p for p in curves["staged"] if p[0] > curves["growth_flops"]]
    for points, label in ((small, "small model"), (grown, "grown model"),
                          (curves["baseline"], "grown size from scratch")):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.axhline(result["target_loss"], color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(curves["growth_flops"], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out loss")
    ax.legend()
    save_figure(fig, out_path)


def write_report(small_csv, grown_csv, baseline_csv, out_md, out_json, out_png) -> dict:
    result = compare(small_csv, grown_csv, baseline_csv)
    write_text(out_md, "# Staged training vs. training the grown size from scratch\n\n"
               + markdown(result))
    write_json(out_json, {k: v for k, v in result.items() if k != "curves"})
    plot(result, out_png)
    return result


@command("growth-report", arg("--small"), arg("--grown"), arg("--baseline"), OUT_MD, OUT_JSON,
         arg("--out-png"), job="growth_report", params=lambda args: None,
         inputs=("small", "grown", "baseline"), outputs=("out_md", "out_json", "out_png"))
def growth_report_command(args, job) -> dict:
    """Compute to reach the baseline's loss: staged (small then grown) against from scratch."""
    result = write_report(args.small, args.grown, args.baseline, args.out_md, args.out_json,
                          args.out_png)
    return {k: result[k] for k in ("target_loss", "flops_ratio", "flops_ratio_at_staged_final")
            if result[k] is not None}

"""Effects across seeds: the same workflow run once per top-level seed (`make experiments`),
each run's reports read back, one difference per effect and seed, and the mean difference with
a 95% Student-t interval across seeds.

Every difference is signed so that a positive value is the effect the papers claim (staged
training saves compute, the high-quality anneal beats the web control, ...). An effect holds
when its whole interval is above zero, is reversed when it is below, and is a null otherwise;
all three are reported as they come out. Within-run bootstrap intervals (in each report) say
how sure one run is of its own test set; this interval says how much the effect moves with the
seed, which changes the demo crawl's sample, every initialisation and every data order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from lmforge.io.storage import InputError, read_json, write_json, write_text
from lmforge.runner import OUT_JSON, OUT_MD, arg, command


@dataclass(frozen=True)
class Effect:
    name: str
    report: str  # relative to a run's results folder
    unit: str
    measure: Callable[[dict | list], float]  # the report → the signed difference of one run


def _growth_saving(report: dict) -> float:
    """1 − staged / from-scratch FLOPs at equal held-out loss: at the baseline's final loss,
    or, when the staged run never gets there, at the staged run's own final loss."""
    ratio = report["flops_ratio"] or report["flops_ratio_at_staged_final"]
    if ratio is None:
        raise InputError("growth.json: neither run reaches the other's final loss")
    return 1.0 - ratio


def _midtrain(task: str, key: str) -> Callable[[list], float]:
    def measure(rows: list) -> float:
        row = next((r for r in rows if r["task"] == task), None)
        if row is None:
            raise InputError(f"midtrain.json has no {task!r} row: add it to midtrain.tasks")
        return -row[key] if row["lower_is_better"] else row[key]
    return measure


def _over_sft(dataset: str, model: str) -> Callable[[dict], float]:
    def measure(report: dict) -> float:
        return report["accuracy"][dataset][model]["minus_" + report["baseline"]]
    return measure


def _prompted(setting: str) -> Callable[[dict], float]:
    """The treated model minus the baseline, averaged over the held-out tasks."""
    def measure(report: dict) -> float:
        differences = [value for rows in report[setting].values() for row in rows.values()
                       for key, value in row.items() if key.startswith("minus_")]
        if not differences:
            raise InputError(f"promptability.json: no {setting} comparison")
        return float(np.mean(differences))
    return measure


def _vision(kind: str, metric: str) -> Callable[[dict], float]:
    def measure(report: dict) -> float:
        return report["metrics"][kind][metric]["vlm"]["minus_text_only"]
    return measure


EFFECTS = (
    Effect("growth: compute saved at equal held-out loss", "train/growth.json",
           "fraction of the baseline's FLOPs", _growth_saving),
    Effect("anneal (midtrain mix) vs web control: reference bits per byte",
           "eval/midtrain.json", "bits per byte (lower-is-better flipped)",
           _midtrain("reference_bpb", "anneal_mean_minus_control")),
    Effect("soup vs mean ingredient: reference bits per byte", "eval/midtrain.json",
           "bits per byte (flipped)", _midtrain("reference_bpb", "soup_minus_anneal_mean")),
    Effect("soup vs mean ingredient: held-out perplexity", "eval/midtrain.json",
           "perplexity (flipped)", _midtrain("heldout_ppl", "soup_minus_anneal_mean")),
    *(Effect(f"{model.upper()} vs SFT: {label}", "eval/posttrain.json", "accuracy",
             _over_sft(dataset, model))
      for model in ("dpo", "rlvr")
      for dataset, label in (("arithmetic", "arithmetic"), ("ifeval", "constraints"))),
    *(Effect(f"promptability: {label}", "eval/promptability.json", "accuracy", _prompted(setting))
      for setting, label in (("zero_shot", "zero-shot"), ("prompt_tuning", "prompt-tuned"))),
    *(Effect(f"VLM vs text-only: {label}", "eval/vision.json", unit, _vision(kind, metric))
      for kind, metric, label, unit in (
          ("pixmo_cap", "token_f1", "caption token F1", "token F1"),
          ("pixmo_points", "accuracy", "pointing", "accuracy"),
          ("pixmo_count", "accuracy", "counting", "accuracy"),
          ("vqa", "accuracy", "VQA", "accuracy"))),
)


def summarize(values: list[float], confidence: float = 0.95) -> dict:
    """Mean, Student-t interval across seeds and the verdict."""
    n = len(values)
    if n < 2:
        raise InputError(f"an interval across seeds needs at least 2 runs, got {n}")
    mean = float(np.mean(values))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
    verdict = "holds" if low > 0 else "reversed" if high < 0 else "null"
    return {"values": values, "mean": mean, "ci95": [low, high], "verdict": verdict}


def collect(runs: list[Path], effects: tuple[Effect, ...] = EFFECTS) -> list[dict]:
    rows = []
    for effect in effects:
        values = []
        for run in runs:
            path = Path(run) / effect.report
            if not path.exists():
                raise InputError(f"{path} is missing: run the workflow for this seed first")
            values.append(float(effect.measure(read_json(path))))
        rows.append({"effect": effect.name, "unit": effect.unit, "report": effect.report,
                     **summarize(values)})
    return rows


def markdown(rows: list[dict], runs: list[Path]) -> str:
    lines = [f"# Effects across {len(runs)} seeds", "",
             "Positive = the direction the papers claim. Mean difference with a 95% Student-t "
             "interval across seeds; holds = interval above 0, null = it spans 0.", "",
             "| effect | per seed | mean [95% CI] | verdict | unit |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        per_seed = ", ".join(f"{v:+.3f}" for v in row["values"])
        low, high = row["ci95"]
        lines.append(f"| {row['effect']} | {per_seed} | {row['mean']:+.3f} "
                     f"[{low:+.3f}, {high:+.3f}] | {row['verdict']} | {row['unit']} |")
    lines += ["", "Runs: " + ", ".join(str(r) for r in runs)]
    return "\n".join(lines) + "\n"


def write_effects(runs: list[str | Path], out_md: str | Path, out_json: str | Path) -> dict:
    runs = [Path(r) for r in runs]
    rows = collect(runs)
    write_json(out_json, {"runs": [str(r) for r in runs], "effects": rows})
    write_text(out_md, markdown(rows, runs))
    return {f"{row['effect']}.mean": row["mean"] for row in rows}


@command("effects", arg("--runs", nargs="+"), OUT_MD, OUT_JSON,
         params=lambda args: {"runs": " ".join(args.runs)}, outputs=("out_md", "out_json"))
def effects_command(args, job) -> dict:
    """Each effect's mean difference across seeded runs of the workflow, with a 95% interval."""
    return write_effects(args.runs, args.out_md, args.out_json)

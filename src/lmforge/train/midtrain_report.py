"""Mid-training as OLMo 2 reports it: each anneal on the high-quality mix, their mean and their
soup against the same anneal on the web mix (the control), per evaluation task, with paired
bootstrap intervals over the tasks' instances (every model scores the same instances, so
resampling them together cancels what the instances share)."""

from __future__ import annotations

import math

import numpy as np

from lmforge.io.storage import InputError, read_json, write_json, write_text
from lmforge.runner import OUT_JSON, OUT_MD, arg, command

BOOTSTRAP_SAMPLES = 2000
# Differences of means that should be 0 come out as ±1e-17.
TIE = 1e-12


def _statistic(result: dict):
    """The task's primary metric as a function of a sample of instance indices, and whether
    lower is better."""
    kind, rows = result["kind"], result["instances"]
    if kind == "token_perplexity":
        logprob = np.array([r["logprob"] for r in rows])
        tokens = np.array([r["tokens"] for r in rows])
        return (lambda i: math.exp(-logprob[i].sum() / tokens[i].sum())), True
    if kind == "perplexity":
        logprob = np.array([r["logprob"] for r in rows])
        n_bytes = np.array([r["bytes"] for r in rows])
        return (lambda i: -logprob[i].sum() / (math.log(2) * n_bytes[i].sum())), True
    if kind == "choice":
        norm = result["primary_metric"].removeprefix("acc_")
        correct = np.array([r["predicted"][norm] == r["gold"] for r in rows], dtype=float)
        return (lambda i: float(correct[i].mean())), False
    if kind == "generate":
        correct = np.array([bool(r["correct"]) for r in rows], dtype=float)
        return (lambda i: float(correct[i].mean())), False
    raise InputError(f"{result['task']}: no mid-training comparison for tasks of kind {kind!r}")


def _interval(samples: list[float]) -> list[float]:
    return [float(np.quantile(samples, 0.025)), float(np.quantile(samples, 0.975))]


def compare(results: list[dict], start: str, anneals: list[str], soup: str, control: str,
            seed: int = 0) -> list[dict]:
    """One row per task: every model's metric, the anneals' mean minus the control and the
    soup minus the anneals' mean, each with a paired 95% bootstrap interval."""
    by_pair = {(r["model"], r["task"]): r for r in results}
    models = [start, *anneals, soup, control]
    rows = []
    for task in dict.fromkeys(r["task"] for r in results):
        missing = [m for m in models if (m, task) not in by_pair]
        if missing:
            raise InputError(f"{task}: no result for {', '.join(missing)}")
        ids = [tuple(str(i.get("id", n)) for n, i in enumerate(by_pair[m, task]["instances"]))
               for m in models]
        if len(set(ids)) != 1:
            raise InputError(f"{task}: the models were scored on different instances")
        stats = {}
        for model in models:
            stats[model], lower_is_better = _statistic(by_pair[model, task])
        everything = np.arange(len(ids[0]))
        value = {m: stats[m](everything) for m in models}

        def differences(sample):
            mean = float(np.mean([stats[a](sample) for a in anneals]))
            return mean - stats[control](sample), stats[soup](sample) - mean

        rng = np.random.default_rng(seed)
        boot = [differences(rng.integers(0, len(everything), len(everything)))
                for _ in range(BOOTSTRAP_SAMPLES)]
        vs_control, soup_vs_mean = differences(everything)
        rows.append({"task": task, "metric": by_pair[start, task]["primary_metric"],
                     "lower_is_better": lower_is_better, "instances": len(everything),
                     "values": value, "anneal_mean": float(np.mean([value[a] for a in anneals])),
                     "anneal_mean_minus_control": vs_control,
                     "anneal_mean_minus_control_ci95": _interval([b[0] for b in boot]),
                     "soup_minus_anneal_mean": soup_vs_mean,
                     "soup_minus_anneal_mean_ci95": _interval([b[1] for b in boot])})
    return rows


def _verdict(difference: float, interval: list[float], lower_is_better: bool) -> str:
    better = difference < 0 if lower_is_better else difference > 0
    if interval[0] - TIE <= 0 <= interval[1] + TIE:
        return "no clear difference"
    return "better" if better else "worse"


def markdown(rows: list[dict], start: str, anneals: list[str], soup: str, control: str) -> str:
    def number(value: float) -> str:
        return f"{value:.4g}"

    head = ["task (metric)", start, *anneals, "anneal mean", soup, f"{control} (control)",
            "anneal mean − control [95% CI]", "soup − anneal mean [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for row in rows:
        direction = "lower is better" if row["lower_is_better"] else "higher is better"
        values = [number(row["values"][m]) for m in (start, *anneals)]
        cells = [f"{row['task']} ({row['metric']}, {direction}, {row['instances']} instances)",
                 *values, number(row["anneal_mean"]), number(row["values"][soup]),
                 number(row["values"][control])]
        for key in ("anneal_mean_minus_control", "soup_minus_anneal_mean"):
            low, high = row[f"{key}_ci95"]
            verdict = _verdict(row[key], row[f"{key}_ci95"], row["lower_is_better"])
            low, high = (0.0 if abs(x) < TIE else x for x in (low, high))
            cells.append(f"{row[key]:+.4g} [{low:+.3g}, {high:+.3g}] {verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(paths: list[str], start: str, anneals: list[str], soup: str, control: str,
                 out_md, out_json) -> list[dict]:
    results = [read_json(p) for p in paths]
    rows = compare(results, start, anneals, soup, control)
    write_text(out_md, "# Mid-training: anneals on the high-quality mix, their soup and the "
               "web-mix control\n\n" + markdown(rows, start, anneals, soup, control))
    write_json(out_json, rows)
    return rows


@command("midtrain-report", arg("--inputs", nargs="+"), arg("--start"),
         arg("--anneals", nargs="+"), arg("--soup"), arg("--control"), OUT_MD, OUT_JSON,
         job="midtrain_report",
         params=lambda args: {"anneals": args.anneals, "control": args.control},
         inputs=("inputs",), outputs=("out_md", "out_json"))
def midtrain_report_command(args, job) -> dict:
    """Anneals, their soup and the web-only control against the start, per task."""
    rows = write_report(args.inputs, args.start, args.anneals, args.soup, args.control,
                        args.out_md, args.out_json)
    return {f"{row['task']}.anneal_mean_minus_control": row["anneal_mean_minus_control"]
            for row in rows}

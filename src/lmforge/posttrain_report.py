"""The post-training chain's report (base → SFT → DPO → RLVR), as Tulu 3 tabulates it.

Every model answers the same held-out verifiable prompts (arithmetic on the operand pairs the
arith_gen evaluation holds out, constraints on held-out documents) by greedy decoding; the
table gives each verifier's accuracy with a 95% bootstrap interval and each model's
difference from the SFT model with a paired interval (the same prompts resampled together).
On the held-out preference pairs it gives, per model, how often the length-normalised
log-probability prefers the chosen answer, and for the models after SFT the DPO implicit
reward accuracy against the SFT model as reference.
"""

from __future__ import annotations

import numpy as np

from lmforge import dpo, rlvr
from lmforge.storage import write_json, write_text

BOOTSTRAP_SAMPLES = 2000


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def bootstrap(correct: dict[str, np.ndarray], baseline: str, seed: int = 0) -> dict:
    """Accuracy per model with an interval, and its paired difference from `baseline`."""
    n = len(next(iter(correct.values())))
    samples = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    out = {}
    for model, values in correct.items():
        means = values[samples].mean(1)
        row = {"accuracy": float(values.mean()), "interval": _interval(means), "n": n}
        if model != baseline:
            difference = means - correct[baseline][samples].mean(1)
            row["minus_" + baseline] = float(values.mean() - correct[baseline].mean())
            row["difference_interval"] = _interval(difference)
        out[model] = row
    return out


def evaluate(models: dict, tokenizer, rlvr_valid: list[dict], preference_pairs: list,
             eos: int, pad: int, max_new_tokens: int, beta: float, baseline: str) -> dict:
    """Verifiable accuracy per dataset and preference statistics for each model."""
    scored = {name: rlvr.greedy_scores(model, tokenizer, rlvr_valid, eos, pad, max_new_tokens)
              for name, model in models.items()}
    datasets = sorted({record["dataset"] for record in rlvr_valid})
    accuracy = {}
    for dataset in ["all", *datasets]:
        accuracy[dataset] = bootstrap(
            {name: np.array([s["correct"] for s in rows if dataset in ("all", s["dataset"])],
                            dtype=float) for name, rows in scored.items()}, baseline)
    logps = {name: dpo.reference_logps(model, preference_pairs, pad, average=True)
             for name, model in models.items()}
    preference = {}
    for name in models:
        row = {"prefers_chosen": float((logps[name][:, 0] > logps[name][:, 1]).float().mean())}
        if name != baseline:
            _, stats = dpo.dpo_loss(logps[name], logps[baseline], beta)
            row["reward_accuracy"] = float(stats["reward_accuracy"])
            row["reward_margin"] = float(stats["reward_margin"])
        preference[name] = row
    return {"baseline": baseline, "accuracy": accuracy, "preference": preference,
            "examples": {name: rows[:5] for name, rows in scored.items()},
            "unterminated": {name: float(np.mean([not s["ended"] for s in rows]))
                             for name, rows in scored.items()}}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(report: dict) -> str:
    baseline = report["baseline"]
    models = list(report["preference"])
    lines = ["# Post-training: held-out verifiable accuracy (greedy), % [95% bootstrap]", "",
             "| prompts | " + " | ".join(models) + " |",
             "|---|" + "---|" * len(models)]
    for dataset, rows in report["accuracy"].items():
        cells = []
        for model in models:
            row = rows[model]
            cell = f"{_pct(row['accuracy'])} [{_pct(row['interval'][0])}, " \
                   f"{_pct(row['interval'][1])}]"
            if model != baseline:
                low, high = row["difference_interval"]
                cell += f"; {'+' if row['minus_' + baseline] >= 0 else ''}" \
                        f"{_pct(row['minus_' + baseline])} [{_pct(low)}, {_pct(high)}] vs " \
                        f"{baseline}"
            cells.append(cell)
        lines.append(f"| {dataset} (n={rows[baseline]['n']}) | " + " | ".join(cells) + " |")
    lines += ["", "Unterminated greedy responses: " + ", ".join(
        f"{m} {_pct(v)}%" for m, v in report["unterminated"].items()), "",
        "## Held-out preference pairs", "",
        "| model | prefers chosen (normalised log-prob) | DPO reward accuracy vs "
        f"{baseline} | reward margin |", "|---|---|---|---|"]
    for model, row in report["preference"].items():
        accuracy = _pct(row["reward_accuracy"]) if "reward_accuracy" in row else "—"
        margin = f"{row['reward_margin']:.3f}" if "reward_margin" in row else "—"
        lines.append(f"| {model} | {_pct(row['prefers_chosen'])} | {accuracy} | {margin} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_md: str, out_json: str) -> None:
    write_json(out_json, report)
    write_text(out_md, markdown(report))

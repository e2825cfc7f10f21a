"""The post-training chain's report (base → SFT → DPO → RLVR), as Tulu 3 tabulates it.

Every model answers the same held-out verifiable prompts (arithmetic on the operand pairs the
arith_gen evaluation holds out, constraints on held-out documents) by greedy decoding; the
table gives each verifier's accuracy with a 95% bootstrap interval and each model's
difference from the SFT model with a paired interval (the same prompts resampled together).
A constant policy, scored by the same verifiers, is the floor a model must clear: it answers
every constraint prompt "indeed" (which meets three of the four forms) and every numeric one
the most common held-out answer (the best any constant does there). The report also gives each
model's mean response length in words and its answers to a few held-out prompts of each kind.
On the held-out preference pairs it gives, per model, how often the length-normalised
log-probability prefers the chosen answer, and for the models after SFT the DPO implicit
reward accuracy against the SFT model as reference.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.io.storage import write_json, write_text
from lmforge.posttrain import dpo, instruct, rlvr
from lmforge.runner import CFG, OUT_JSON, OUT_MD, TOKENIZER, arg, command

BOOTSTRAP_SAMPLES = 2000
CONSTANT = "constant"
CONSTANT_CONSTRAINT_ANSWER = "indeed"
SAMPLES_PER_DATASET = 3


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


def constant_answers(records: list[dict]) -> dict[str, str]:
    """The constant policy's answer per dataset."""
    answers = {}
    for dataset in sorted({r["dataset"] for r in records}):
        if instruct.VERIFIERS[dataset] is instruct.verify_constraint:
            answers[dataset] = CONSTANT_CONSTRAINT_ANSWER
        else:
            truths = Counter(r["ground_truth"] for r in records if r["dataset"] == dataset)
            answers[dataset] = truths.most_common(1)[0][0]
    return answers


def constant_scores(records: list[dict]) -> tuple[dict[str, str], list[dict]]:
    """The constant policy's answers and, per record, its score as greedy_scores gives it."""
    answers = constant_answers(records)
    return answers, [{"dataset": r["dataset"], "response": answers[r["dataset"]], "ended": True,
                      "correct": instruct.verify(r, answers[r["dataset"]])} for r in records]


def samples(records: list[dict], scored: dict[str, list[dict]]) -> list[dict]:
    """The first held-out prompts of each dataset with every model's (and the constant
    policy's) answer."""
    out = []
    for dataset in sorted({r["dataset"] for r in records}):
        indices = [i for i, r in enumerate(records) if r["dataset"] == dataset]
        out += [{"dataset": dataset, "prompt": records[i]["messages"][-1]["content"],
                 "ground_truth": records[i]["ground_truth"],
                 "responses": {name: {key: rows[i][key] for key in ("response", "correct")}
                               for name, rows in scored.items()}}
                for i in indices[:SAMPLES_PER_DATASET]]
    return out


def evaluate(models: dict, tokenizer, rlvr_valid: list[dict], preference_pairs: list,
             eos: int, pad: int, max_new_tokens: int, beta: float, baseline: str) -> dict:
    """Verifiable accuracy per dataset (and the constant policy's), mean response lengths,
    sample answers and preference statistics for each model."""
    scored = {name: rlvr.greedy_scores(model, tokenizer, rlvr_valid, eos, pad, max_new_tokens)
              for name, model in models.items()}
    answers, scored[CONSTANT] = constant_scores(rlvr_valid)
    datasets = sorted({record["dataset"] for record in rlvr_valid})
    accuracy, constant, mean_words = {}, {}, {name: {} for name in scored}
    for dataset in ["all", *datasets]:
        rows = {name: [s for s in rows if dataset in ("all", s["dataset"])]
                for name, rows in scored.items()}
        accuracy[dataset] = bootstrap(
            {name: np.array([s["correct"] for s in part], dtype=float)
             for name, part in rows.items()}, baseline)
        constant[dataset] = accuracy[dataset].pop(CONSTANT)
        for name, part in rows.items():
            mean_words[name][dataset] = float(np.mean([len(s["response"].split())
                                                       for s in part]))
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
    return {"baseline": baseline, "accuracy": accuracy,
            "constant": {"answers": answers, "accuracy": constant}, "mean_words": mean_words,
            "preference": preference, "samples": samples(rlvr_valid, scored),
            "unterminated": {name: float(np.mean([not s["ended"] for s in rows]))
                             for name, rows in scored.items() if name in models}}


def flat_metrics(report: dict) -> dict[str, float]:
    """Accuracy (the constant policy's too) and mean words per dataset and model."""
    out = {f"{dataset}.{model}": row["accuracy"]
           for dataset, rows in report["accuracy"].items() for model, row in rows.items()}
    out |= {f"{dataset}.{CONSTANT}": row["accuracy"]
            for dataset, row in report["constant"]["accuracy"].items()}
    out |= {f"{dataset}.{model}.mean_words": words
            for model, per_dataset in report["mean_words"].items()
            for dataset, words in per_dataset.items()}
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _interval_cell(row: dict) -> str:
    return f"{_pct(row['accuracy'])} [{_pct(row['interval'][0])}, {_pct(row['interval'][1])}]"


def _table_text(text: str) -> str:
    """A response as one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ⏎ ").strip() or "(empty)"


def markdown(report: dict) -> str:
    baseline = report["baseline"]
    models = list(report["preference"])
    constant = report["constant"]
    lines = ["# Post-training: held-out verifiable accuracy (greedy), % [95% bootstrap]", "",
             "| prompts | " + " | ".join(models) + f" | {CONSTANT} |",
             "|---|" + "---|" * (len(models) + 1)]
    for dataset, rows in report["accuracy"].items():
        cells = []
        for model in models:
            row = rows[model]
            cell = _interval_cell(row)
            if model != baseline:
                low, high = row["difference_interval"]
                cell += f"; {'+' if row['minus_' + baseline] >= 0 else ''}" \
                        f"{_pct(row['minus_' + baseline])} [{_pct(low)}, {_pct(high)}] vs " \
                        f"{baseline}"
            cells.append(cell)
        cells.append(_interval_cell(constant["accuracy"][dataset]))
        lines.append(f"| {dataset} (n={rows[baseline]['n']}) | " + " | ".join(cells) + " |")
    datasets = list(report["accuracy"])
    lines += ["", f"{CONSTANT}: the same answer to every prompt of a dataset (" + ", ".join(
        f'{dataset} "{answer}"' for dataset, answer in constant["answers"].items())
        + "), the floor for a model that learned the task. A constraint answer counts if it "
        "meets the constraint and completes the sentence (word F1 with the true continuation "
        f"≥ {instruct.MIN_CONTENT_F1}).", "",
        "Unterminated greedy responses: " + ", ".join(
            f"{m} {_pct(v)}%" for m, v in report["unterminated"].items()), "",
        "## Mean response length (words)", "",
        "| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    lines += [f"| {model} | " + " | ".join(f"{words[d]:.1f}" for d in datasets) + " |"
              for model, words in report["mean_words"].items()]
    lines += ["", "## Sample held-out prompts", ""]
    for sample in report["samples"]:
        lines += [f"**{sample['dataset']}**, expected `{sample['ground_truth']}`:", ""]
        lines += ["> " + line for line in sample["prompt"].split("\n")]
        lines += ["", "| model | response | verified |", "|---|---|---|"]
        lines += [f"| {model} | {_table_text(answer['response'])} | "
                  f"{'yes' if answer['correct'] else 'no'} |"
                  for model, answer in sample["responses"].items()]
        lines.append("")
    lines += ["## Held-out preference pairs", "",
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


@command("posttrain-report", arg("--models", nargs="+"), arg("--baseline"), TOKENIZER,
         arg("--rlvr-valid"), arg("--preference-valid"), CFG, OUT_MD, OUT_JSON,
         job="posttrain_report", inputs=("models", "tokenizer", "rlvr_valid", "preference_valid"),
         outputs=("out_md", "out_json"))
def posttrain_report_command(args, job) -> dict:
    """Held-out verifiable accuracy and preference statistics of the post-training chain."""
    from lmforge.model.checkpoint import load_model

    models = {}
    for item in args.models:
        name, _, path = item.partition("=")
        models[name] = load_model(path)
    tokenizer = load_tokenizer(args.tokenizer)
    max_len = next(iter(models.values())).cfg.max_seq_len + 1
    pairs, _ = dpo.encode_pairs(tokenizer, instruct.read_records(args.preference_valid,
                                                                 "preference"), max_len)
    report = evaluate(models, tokenizer, instruct.read_records(args.rlvr_valid, "rlvr"), pairs,
                      tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD),
                      args.cfg["max_new_tokens"], args.cfg["beta"], args.baseline)
    write_report(report, args.out_md, args.out_json)
    return flat_metrics(report)

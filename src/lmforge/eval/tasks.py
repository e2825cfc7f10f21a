"""Evaluation tasks behind one interface (Catwalk's idea): a task reads its documents from local
files, turns them into instances, asks a `LanguageModel` for what it needs and computes its
metrics, keeping every instance's prediction.

Kinds:
- `choice`: ranked classification as in OLMES (Gu et al. 2024). Every choice is a (context,
  continuation) request; the prediction is the best choice under four normalisations — none
  (`acc_raw`), per token, per character of the continuation, and unconditional (PMI: minus the
  log-likelihood after the bare `Answer:` prompt, `acc_uncond`). Formulations: cloze `rc` (the
  answer text is the continuation) and lettered `mc` (choices listed as ` A.`, ` B.`…; the
  continuation is the letter).
- `generate`: greedy generation with stop sequences, the answer extracted (GSM8K's `#### N`,
  else the last number) and scored by exact match.
- `perplexity`: documents scored whole in windows of the model's length (lm-eval's rolling
  log-likelihood), reported as perplexity and bits per byte, overall and per domain (Paloma).
- `token_perplexity`: the workflow's held-out token file in windows (no text needed).

Data: jsonl(.gz), parquet, or a `datasets` directory written by `save_to_disk` (its Arrow files
are read with pyarrow; `datasets` itself is not needed). Built-in formats read the benchmarks'
own published fields: ARC, OpenBookQA, HellaSwag, PIQA, WinoGrande, BoolQ, SciQ, COPA, GSM8K,
OLMES request dumps, and the workflow's generated tasks.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from lmforge.eval.formats import (
    ChoiceInstance,
    GenerationInstance,
    load_choice_instances,
    read_records,
    with_few_shot,
)
from lmforge.eval.lm import LanguageModel
from lmforge.eval.specs import DEFAULT_PRIMARY, TaskSpec
from lmforge.io.storage import InputError

NORMALISATIONS = ("raw", "per_token", "per_char", "uncond")
# ---------------------------------------------------------------------------------------------
# Ranked classification


def score_choices(model: LanguageModel, instances: list[ChoiceInstance],
                  unconditional: bool = True, progress: bool = False) -> list[dict]:
    """Per-instance predictions under every normalisation, with the raw scores behind them;
    `unconditional=False` skips the PMI requests (and `acc_uncond`)."""
    requests = [pair for inst in instances for pair in inst.requests]
    with_uncond = [inst for inst in instances if unconditional and inst.uncond_context]
    requests += [(inst.uncond_context, cont) for inst in with_uncond for _, cont in inst.requests]
    scores = iter(model.loglikelihood(requests, progress=progress))
    conditional = [[next(scores) for _ in inst.requests] for inst in instances]
    results = []
    for inst, scored in zip(instances, conditional):
        logprobs = [s.logprob for s in scored]
        results.append({
            "id": inst.id, "gold": inst.gold, "logprobs": logprobs,
            "tokens": [s.tokens for s in scored], "greedy": [s.is_greedy for s in scored],
            "normalised": {
                "raw": logprobs,
                "per_token": [s.logprob / s.tokens for s in scored],
                "per_char": [lp / len(cont) for lp, (_, cont) in zip(logprobs, inst.requests)],
            }})
    for inst, result in zip(instances, results):
        if unconditional and inst.uncond_context:
            uncond = [next(scores).logprob for _ in inst.requests]
            result["uncond_logprobs"] = uncond
            result["normalised"]["uncond"] = [a - b for a, b in zip(result["logprobs"], uncond)]
    for result in results:
        result["predicted"] = {name: int(np.argmax(values))
                               for name, values in result["normalised"].items()}
    return results


def accuracy_with_uncertainty(hits: np.ndarray, seed: int = 1234, resamples: int = 1000
                              ) -> dict:
    """Mean of 0/1 outcomes, its standard error and a 95% percentile-bootstrap interval."""
    draws = np.random.default_rng(seed).integers(0, len(hits), size=(resamples, len(hits)))
    boot = hits[draws].mean(axis=1)
    return {"value": float(hits.mean()),
            "stderr": float(hits.std(ddof=1) / math.sqrt(len(hits))) if len(hits) > 1 else 0.0,
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}


def choice_metrics(results: list[dict], seed: int = 1234) -> dict:
    """Accuracy per normalisation with its standard error and 95% bootstrap interval."""
    metrics: dict = {"instances": len(results),
                     "chance": float(np.mean([1 / len(r["logprobs"]) for r in results]))}
    for name in NORMALISATIONS:
        if not all(name in r["predicted"] for r in results):
            continue
        hits = np.array([r["predicted"][name] == r["gold"] for r in results], dtype=float)
        summary = accuracy_with_uncertainty(hits, seed)
        metrics[f"acc_{name}"] = summary["value"]
        metrics[f"acc_{name}_stderr"] = summary["stderr"]
        metrics[f"acc_{name}_ci95"] = summary["ci95"]
    return metrics


# ---------------------------------------------------------------------------------------------
# Generation


NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_answer(text: str) -> str:
    """GSM8K's `#### N` if present, else the last number in the text (commas, `$`, trailing
    period removed); '' when there is none."""
    marked = re.search(r"####\s*(-?[\d,.$]+)", text)
    found = [marked.group(1)] if marked else NUMBER.findall(text)
    if not found:
        return ""
    return found[-1].replace(",", "").replace("$", "").rstrip(".")


def gsm8k_instances(path: str | Path, shots_path: str | Path | None, num_shots: int,
                    seed: int) -> list[GenerationInstance]:
    """GSM8K records (`question`, `answer` ending in `#### N`) as prompts with `num_shots`
    solved examples drawn once, with a fixed seed, from `shots_path` (its train split)."""
    records = read_records(path)
    shots = random.Random(seed).sample(read_records(shots_path), num_shots) if num_shots else []
    prefix = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    instances = []
    for index, record in enumerate(records):
        try:
            answer = extract_answer(record["answer"])
            instances.append(GenerationInstance(str(index),
                                                f"{prefix}Question: {record['question']}\n"
                                                "Answer:", answer))
        except (KeyError, TypeError) as err:
            raise InputError(f"{path}: record {index} is not GSM8K's format ({err!r})") from None
    return instances


def arith_instances(path: str | Path) -> list[GenerationInstance]:
    """The workflow's generated `arith_gen` items, asked in the SFT chat format."""
    from lmforge.data.tokenize import EOS
    from lmforge.posttrain.chat import prompt_text

    try:
        return [GenerationInstance(str(i), prompt_text(r["question"], EOS), str(r["answer"]))
                for i, r in enumerate(read_records(path))]
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: not the workflow's arith_gen format ({err!r})") from None


def generate_and_score(model: LanguageModel, instances: list[GenerationInstance],
                       stop: list[str], max_new_tokens: int, seed: int = 1234
                       ) -> tuple[dict, list[dict]]:
    results = []
    for inst in instances:
        text = model.generate(inst.prompt, stop, max_new_tokens)
        predicted = extract_answer(text)
        results.append({"id": inst.id, "gold": inst.answer, "generated": text,
                        "predicted": predicted, "correct": predicted == inst.answer})
    hits = np.array([r["correct"] for r in results], dtype=float)
    summary = accuracy_with_uncertainty(hits, seed)
    return ({"instances": len(results), "exact_match": summary["value"],
             "exact_match_stderr": summary["stderr"], "exact_match_ci95": summary["ci95"]},
            results)


# ---------------------------------------------------------------------------------------------
# Perplexity per domain


def domain_of(doc: dict, domain_field: str) -> str:
    """A document's domain: `url_host` (the host of `metadata.url`, WIMBD's domains) or a
    field, dotted for nested ones (`metadata.subset`)."""
    if domain_field == "url_host":
        return urlsplit(doc.get("metadata", {}).get("url") or "").hostname or "unknown"
    value = doc
    for key in domain_field.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return str(value) if value is not None else "unknown"


def perplexity_by_domain(model: LanguageModel, documents: list[dict], domain_field: str,
                         progress: bool = False) -> tuple[dict, list[dict]]:
    """Rolling log-likelihood of every document; perplexity per token and bits per byte,
    overall and per domain (micro-averaged over tokens and bytes, as Paloma)."""
    results = []
    for index, doc in enumerate(tqdm(documents, desc="documents", disable=not progress)):
        try:
            text = doc["text"]
        except (KeyError, TypeError):
            raise InputError(f"held-out document {index} has no text") from None
        logprob, tokens = model.rolling_loglikelihood(text)
        results.append({"id": str(doc.get("id", index)), "domain": domain_of(doc, domain_field),
                        "logprob": logprob, "tokens": tokens, "bytes": len(text.encode("utf-8"))})

    def summarise(rows: list[dict]) -> dict:
        logprob = sum(r["logprob"] for r in rows)
        tokens, n_bytes = sum(r["tokens"] for r in rows), sum(r["bytes"] for r in rows)
        return {"documents": len(rows), "tokens": tokens, "bytes": n_bytes,
                "perplexity": math.exp(min(-logprob / tokens, 50.0)),
                "bits_per_byte": -logprob / (math.log(2) * n_bytes)}

    domains = sorted({r["domain"] for r in results})
    metrics = {**summarise(results),
               "domains": {d: summarise([r for r in results if r["domain"] == d])
                           for d in domains}}
    return metrics, results


def token_perplexity(model: LanguageModel, tokens_dir: str | Path, max_tokens: int
                     ) -> tuple[dict, list[dict]]:
    """Perplexity over the first `max_tokens` of the workflow's held-out token file, in
    non-overlapping windows of the model's length."""
    from lmforge.data.tokenize import open_tokens

    tokens = [int(t) for t in open_tokens(tokens_dir, "valid")[:max_tokens + 1]]
    if len(tokens) < 2:
        raise InputError(f"{tokens_dir}: fewer than two held-out tokens")
    windows = [([tokens[start]], tokens[start + 1:start + 1 + model.max_length])
               for start in range(0, len(tokens) - 1, model.max_length)]
    scored = model.score_tokens(windows)
    count = sum(s.tokens for s in scored)
    loss = -sum(s.logprob for s in scored) / count
    return ({"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count},
            [{"window": i, "logprob": s.logprob, "tokens": s.tokens}
             for i, s in enumerate(scored)])


# ---------------------------------------------------------------------------------------------
# Task specifications (config) → results


def run_task(model: LanguageModel, spec: TaskSpec, progress: bool = False) -> dict:
    """Metrics and per-instance predictions of one model on one task."""
    if spec.kind == "choice":
        instances = load_choice_instances(spec.format, spec.path, spec.formulation)
        instances = instances[:spec.limit] if spec.limit else instances
        if spec.num_shots:
            pool = load_choice_instances(spec.format, spec.shots_path, spec.formulation)
            instances = with_few_shot(instances, pool, spec.num_shots, spec.seed)
        results = score_choices(model, instances, progress=progress)
        metrics = choice_metrics(results, spec.seed)
    elif spec.kind == "generate":
        if spec.format == "gsm8k":
            instances = gsm8k_instances(spec.path, spec.shots_path, spec.num_shots, spec.seed)
        elif spec.format == "lmforge_arith":
            instances = arith_instances(spec.path)
        else:
            raise InputError(f"task {spec.name!r}: unknown generation format {spec.format!r}")
        instances = instances[:spec.limit] if spec.limit else instances
        metrics, results = generate_and_score(model, instances, spec.stop, spec.max_new_tokens,
                                              spec.seed)
    elif spec.kind == "perplexity":
        documents = read_records(spec.path)[:spec.limit or None]
        metrics, results = perplexity_by_domain(model, documents, spec.domain_field, progress)
    else:
        if not spec.limit:
            raise InputError(f"task {spec.name!r}: token_perplexity needs `limit` (tokens)")
        metrics, results = token_perplexity(model, spec.path, spec.limit)
    primary = spec.primary_metric or DEFAULT_PRIMARY[spec.kind]
    if primary not in metrics:
        raise InputError(f"task {spec.name!r}: primary metric {primary!r} is not among "
                         f"{sorted(k for k in metrics if not k.endswith(('_ci95', '_stderr')))}")
    return {"task": spec.name, "model": model.name, "kind": spec.kind, "primary_metric": primary,
            "metrics": metrics, "instances": results}

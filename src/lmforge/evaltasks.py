"""Evaluation tasks behind one interface (Catwalk's idea): a task turns its documents into
instances, asks a `LanguageModel` for what it needs, and computes its metrics.

Ranked classification follows OLMES (Gu et al. 2024): every choice is scored as a continuation
of the context and the prediction is the best choice under one of four normalisations — none
(summed log-likelihood, `acc_raw`), per token, per character of the continuation, and
unconditional (PMI: minus the log-likelihood of the choice after the bare `Answer:` prompt,
`acc_uncond`). OLMES' own request dumps (oe-eval's `requests.jsonl.gz`: exact prompts, the
unconditional requests at `doc_id + uncond_docid_offset`) load as they are.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge.lm import LanguageModel
from lmforge.storage import InputError

NORMALISATIONS = ("raw", "per_token", "per_char", "uncond")
UNCONDITIONAL_CONTEXT = "Answer:"


@dataclass
class ChoiceInstance:
    """One multiple-choice question: a context, continuations (with their leading space), the
    gold index, and the context for PMI normalisation (None: no `acc_uncond`)."""

    id: str
    context: str
    continuations: list[str]
    gold: int
    uncond_context: str | None = UNCONDITIONAL_CONTEXT
    meta: dict = field(default_factory=dict)


def load_olmes_requests(directory: str | Path) -> tuple[dict, list[ChoiceInstance]]:
    """An oe-eval request dump (`config.json` + `requests.jsonl.gz`) as instances."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
        offset = config["task_config"]["metric_kwargs"].get("uncond_docid_offset")
        with gzip.open(directory / "requests.jsonl.gz", "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    except (OSError, EOFError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{directory}: not a readable OLMES request dump ({err})") from None
    docs: dict[int, dict] = {}
    uncond: dict[int, str] = {}
    for row in rows:
        if row.get("request_type") != "loglikelihood":
            raise InputError(f"{directory}: request type {row.get('request_type')!r} is not "
                             "a ranked-classification request")
        doc_id, request = row["doc_id"], row["request"]
        if offset is not None and doc_id >= offset:
            uncond[doc_id - offset] = request["context"]
            continue
        doc = docs.setdefault(doc_id, {"context": request["context"], "continuations": {},
                                       "gold": row["label"], "native_id": row["native_id"]})
        if request["context"] != doc["context"]:
            raise InputError(f"{directory}: document {doc_id} has two contexts")
        doc["continuations"][row["idx"]] = request["continuation"]
    instances = []
    for doc_id in sorted(docs):
        doc = docs[doc_id]
        choices = [doc["continuations"][i] for i in sorted(doc["continuations"])]
        instances.append(ChoiceInstance(
            id=str(doc["native_id"]), context=doc["context"], continuations=choices,
            gold=int(doc["gold"]), uncond_context=uncond.get(doc_id),
            meta={"doc_id": doc_id}))
    return config, instances


def score_choices(model: LanguageModel, instances: list[ChoiceInstance],
                  unconditional: bool = True, progress: bool = False) -> list[dict]:
    """Per-instance predictions under every normalisation, with the raw scores behind them;
    `unconditional=False` skips the PMI requests (and `acc_uncond`)."""
    requests = [(inst.context, c) for inst in instances for c in inst.continuations]
    with_uncond = [inst for inst in instances if unconditional and inst.uncond_context]
    requests += [(inst.uncond_context, c) for inst in with_uncond for c in inst.continuations]
    scores = iter(model.loglikelihood(requests, progress=progress))
    conditional = [[next(scores) for _ in inst.continuations] for inst in instances]
    results = []
    for inst, scored in zip(instances, conditional):
        logprobs = [s.logprob for s in scored]
        normalised = {
            "raw": logprobs,
            "per_token": [s.logprob / s.tokens for s in scored],
            "per_char": [lp / len(c) for lp, c in zip(logprobs, inst.continuations)],
        }
        results.append({"id": inst.id, "gold": inst.gold, "logprobs": logprobs,
                        "tokens": [s.tokens for s in scored],
                        "greedy": [s.is_greedy for s in scored], "normalised": normalised})
    for inst, result in zip(instances, results):
        if unconditional and inst.uncond_context:
            uncond = [next(scores).logprob for _ in inst.continuations]
            result["uncond_logprobs"] = uncond
            result["normalised"]["uncond"] = [a - b for a, b in zip(result["logprobs"], uncond)]
    for result in results:
        result["predicted"] = {name: int(np.argmax(values))
                               for name, values in result["normalised"].items()}
    return results


def choice_metrics(results: list[dict], seed: int = 1234, resamples: int = 1000) -> dict:
    """Accuracy per normalisation with its standard error and a 95% bootstrap interval."""
    metrics: dict[str, float] = {"instances": len(results)}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(results), size=(resamples, len(results)))
    for name in NORMALISATIONS:
        if not all(name in r["predicted"] for r in results):
            continue
        hits = np.array([r["predicted"][name] == r["gold"] for r in results], dtype=float)
        accuracy = hits.mean()
        boot = hits[draws].mean(axis=1)
        metrics[f"acc_{name}"] = float(accuracy)
        metrics[f"acc_{name}_stderr"] = float(hits.std(ddof=1) / math.sqrt(len(hits)))
        metrics[f"acc_{name}_ci95"] = [float(np.quantile(boot, 0.025)),
                                       float(np.quantile(boot, 0.975))]
    return metrics

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

import gzip
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from lmforge.lm import LanguageModel
from lmforge.storage import InputError

NORMALISATIONS = ("raw", "per_token", "per_char", "uncond")
UNCONDITIONAL_CONTEXT = "Answer:"
LETTERS = "ABCDEFGHIJ"


@dataclass
class ChoiceInstance:
    """One question: a (context, continuation) request per choice (contexts differ only in
    partial scoring, as WinoGrande), the gold index, and the context for PMI (None: no
    `acc_uncond`)."""

    id: str
    requests: list[tuple[str, str]]
    gold: int
    uncond_context: str | None = UNCONDITIONAL_CONTEXT


@dataclass
class GenerationInstance:
    id: str
    prompt: str
    answer: str


# ---------------------------------------------------------------------------------------------
# Reading local files


def read_records(path: str | Path) -> list[dict]:
    """Rows of a jsonl(.gz) or parquet file, or of a `datasets.save_to_disk` directory."""
    path = Path(path)
    try:
        if path.is_dir():
            import pyarrow as pa

            files = sorted(path.glob("*.arrow"))
            if not files:
                raise InputError(f"{path}: no .arrow files (not a `save_to_disk` directory)")
            tables = []
            for file in files:
                with pa.memory_map(str(file)) as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
            return pa.concat_tables(tables).to_pylist()
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except InputError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: cannot read evaluation records ({err})") from None


# ---------------------------------------------------------------------------------------------
# Benchmark formats: one record of the benchmark's published file → (question, choices, gold)
# or a ready instance. Prompts are OLMES'.


def _arc_like(record: dict) -> tuple[str, list[str], int]:
    """ARC (`question: {stem, choices}` in the original release, flat in `datasets`) and
    OpenBookQA (`question_stem`)."""
    question = record["question_stem"] if "question_stem" in record else record["question"]
    if isinstance(question, dict):
        stem, choices = question["stem"], question["choices"]
        texts, labels = [c["text"] for c in choices], [c["label"] for c in choices]
    else:
        stem = question
        texts, labels = record["choices"]["text"], record["choices"]["label"]
    key = str(record["answerKey"]).strip()
    return stem, texts, labels.index(key)


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(record: dict) -> ChoiceInstance:
    context = _hellaswag_text(f"{record['activity_label']}: {record['ctx_a']} "
                              f"{record['ctx_b'].capitalize()}")
    return ChoiceInstance(str(record.get("ind", record.get("source_id", ""))),
                          [(context, " " + _hellaswag_text(e)) for e in record["endings"]],
                          int(record["label"]))


def _piqa(record: dict) -> tuple[str, list[str], int]:
    return record["goal"], [record["sol1"], record["sol2"]], int(record["label"])


def _boolq(record: dict) -> ChoiceInstance:
    question = record["question"].strip()
    question = question[0].upper() + question[1:]
    context = f"{record['passage']}\nQuestion: {question}?\nAnswer:"
    return ChoiceInstance(str(record.get("idx", "")), [(context, " yes"), (context, " no")],
                          0 if record["answer"] in (True, 1, "true", "True") else 1)


def _sciq(record: dict) -> tuple[str, list[str], int]:
    choices = [record["distractor1"], record["distractor2"], record["distractor3"],
               record["correct_answer"]]
    return record["question"], choices, 3


def _copa(record: dict) -> ChoiceInstance:
    connective = {"cause": " because", "effect": " therefore"}[record["question"]]
    context = record["premise"].strip().rstrip(".") + connective
    lower = [" " + c[0].lower() + c[1:] for c in (record["choice1"], record["choice2"])]
    return ChoiceInstance(str(record.get("idx", "")), [(context, c) for c in lower],
                          int(record["label"]))


def _winogrande(record: dict) -> ChoiceInstance:
    """Partial scoring: the sentence up to the blank, with each option, is the context; the
    rest of the sentence is the shared continuation."""
    before, after = record["sentence"].split("_", 1)
    options = (record["option1"], record["option2"])
    continuation = " " + after.strip()
    return ChoiceInstance(str(record.get("qID", "")),
                          [(before + option, continuation) for option in options],
                          int(record["answer"]) - 1, uncond_context=None)


QUESTION_FORMATS: dict[str, Callable[[dict], tuple[str, list[str], int]]] = {
    "arc": _arc_like, "openbookqa": _arc_like, "piqa": _piqa, "sciq": _sciq}
INSTANCE_FORMATS: dict[str, Callable[[dict], ChoiceInstance]] = {
    "hellaswag": _hellaswag, "boolq": _boolq, "copa": _copa, "winogrande": _winogrande}


def question_instance(record_id: str, question: str, choices: list[str], gold: int,
                      formulation: str) -> ChoiceInstance:
    """OLMES' two formulations of a question with listed choices."""
    if formulation == "rc":
        context = f"Question: {question}\nAnswer:"
        return ChoiceInstance(record_id, [(context, " " + c) for c in choices], gold)
    listed = "".join(f"\n {LETTERS[i]}. {c}" for i, c in enumerate(choices))
    context = f"Question: {question}{listed}\nAnswer:"
    return ChoiceInstance(record_id, [(context, f" {LETTERS[i]}") for i in range(len(choices))],
                          gold, uncond_context=None)


def load_choice_instances(fmt: str, path: str | Path, formulation: str = "rc"
                          ) -> list[ChoiceInstance]:
    if fmt == "olmes_requests":
        return load_olmes_requests(path)[1]
    records = read_records(path)
    instances = []
    for index, record in enumerate(records):
        try:
            if fmt in QUESTION_FORMATS:
                question, choices, gold = QUESTION_FORMATS[fmt](record)
                record_id = str(record.get("id", index))
                instances.append(question_instance(record_id, question, choices, gold,
                                                   formulation))
            elif fmt in INSTANCE_FORMATS:
                if formulation != "rc":
                    raise InputError(f"{fmt} has no {formulation!r} formulation here (rc only)")
                instances.append(INSTANCE_FORMATS[fmt](record))
            elif fmt == "lmforge_cloze":
                instances.append(question_instance(str(index), record["context"],
                                                   record["choices"], record["gold"],
                                                   formulation))
            else:
                raise InputError(f"unknown choice-task format {fmt!r}")
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise InputError(f"{path}: record {index} is not in {fmt}'s format ({err!r})"
                             ) from None
    return instances


def load_olmes_requests(directory: str | Path) -> tuple[dict, list[ChoiceInstance]]:
    """An oe-eval request dump (`config.json` + `requests.jsonl.gz`) as instances; its
    unconditional requests sit at `doc_id + uncond_docid_offset`."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
        offset = config["task_config"]["metric_kwargs"].get("uncond_docid_offset")
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise InputError(f"{directory}: not a readable OLMES request dump ({err!r})") from None
    docs: dict[int, dict] = {}
    uncond: dict[int, str] = {}
    for row in read_records(directory / "requests.jsonl.gz"):
        if row.get("request_type") != "loglikelihood":
            raise InputError(f"{directory}: request type {row.get('request_type')!r} is not "
                             "a ranked-classification request")
        doc_id, request = row["doc_id"], row["request"]
        if offset is not None and doc_id >= offset:
            uncond[doc_id - offset] = request["context"]
            continue
        doc = docs.setdefault(doc_id, {"requests": {}, "gold": row["label"],
                                       "native_id": row["native_id"]})
        doc["requests"][row["idx"]] = (request["context"], request["continuation"])
    return config, [
        ChoiceInstance(str(docs[d]["native_id"]),
                       [docs[d]["requests"][i] for i in sorted(docs[d]["requests"])],
                       int(docs[d]["gold"]), uncond_context=uncond.get(d))
        for d in sorted(docs)]


def with_few_shot(instances: list[ChoiceInstance], pool: list[ChoiceInstance], num_shots: int,
                  seed: int) -> list[ChoiceInstance]:
    """Every instance's contexts after the same `num_shots` solved examples, drawn once with
    a fixed seed from `pool` (another split), each its gold request, blank-line separated."""
    if len(pool) < num_shots:
        raise InputError(f"{num_shots} shots asked for, the shots file has {len(pool)}")
    shots = random.Random(seed).sample(pool, num_shots)
    prefix = "".join("".join(shot.requests[shot.gold]) + "\n\n" for shot in shots)
    return [ChoiceInstance(inst.id, [(prefix + c, x) for c, x in inst.requests], inst.gold,
                           inst.uncond_context) for inst in instances]


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
    from lmforge.sft import prompt_text

    try:
        return [GenerationInstance(str(i), prompt_text(r["question"]), str(r["answer"]))
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
    from lmforge.storage import read_json

    try:
        meta = read_json(Path(tokens_dir) / "meta.json")
        tokens = np.memmap(Path(tokens_dir) / "valid.npy", dtype=np.dtype(meta["dtype"]), mode="r")
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{tokens_dir}: no readable held-out tokens ({err!r})") from None
    tokens = [int(t) for t in tokens[:max_tokens + 1]]
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


@dataclass
class TaskSpec:
    """One task of an evaluation matrix: `kind` choice | generate | perplexity, `format` one of
    the readers above, `path` its local data."""

    name: str
    kind: str
    format: str
    path: str
    formulation: str = "rc"
    primary_metric: str | None = None
    num_shots: int = 0
    shots_path: str | None = None
    seed: int = 1234
    limit: int | None = None
    stop: list[str] = field(default_factory=lambda: ["\n\n", "Question:"])
    max_new_tokens: int = 256
    domain_field: str = "source"

    @classmethod
    def from_config(cls, name: str, values: dict) -> TaskSpec:
        try:
            spec = cls(name=name, **values)
        except TypeError as err:
            raise InputError(f"task {name!r}: {err}") from None
        if spec.kind not in KINDS:
            raise InputError(f"task {name!r}: unknown kind {spec.kind!r}")
        if spec.formulation not in ("rc", "mc"):
            raise InputError(f"task {name!r}: formulation must be rc or mc")
        if spec.num_shots and not spec.shots_path:
            raise InputError(f"task {name!r}: num_shots needs shots_path (another split, so "
                             "that no shot is a test instance)")
        return spec


DEFAULT_PRIMARY = {"choice": "acc_per_char", "generate": "exact_match",
                   "perplexity": "bits_per_byte", "token_perplexity": "perplexity"}
KINDS = tuple(DEFAULT_PRIMARY)


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

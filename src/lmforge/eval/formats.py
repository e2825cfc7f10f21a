"""Evaluation instances and the benchmark formats that make them: a task's local files
(jsonl(.gz), parquet, a `datasets` directory) read with the benchmarks' own published fields."""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.io.storage import InputError

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

"""Every evaluation item's text as it could appear on a web page (the question with its gold
answer, a perplexity document whole): what decontamination and the contamination analysis
look for in the corpus. Read with the evaluation's own format readers, without model code."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from lmforge.eval import generated
from lmforge.eval.formats import QUESTION_FORMATS, load_choice_instances, read_records
from lmforge.eval.specs import TaskSpec
from lmforge.io.storage import InputError

# The workflow's generated tasks, as its demo crawl writes their items into pages.
GENERATED = {"lmforge_cloze": "cloze_mc", "lmforge_arith": "arith_gen"}


def item_texts(spec: TaskSpec) -> Iterator[tuple[str, str]]:
    """(item id, text) of each item of a task: a question and its gold answer as published
    (without the prompt's scaffolding), an instance format's gold request, a document."""
    try:
        if spec.format in GENERATED:
            for index, record in enumerate(read_records(spec.path)):
                yield str(record.get("id", index)), generated.item_text(GENERATED[spec.format],
                                                                       record)
        elif spec.format in QUESTION_FORMATS:
            for index, record in enumerate(read_records(spec.path)):
                question, choices, gold = QUESTION_FORMATS[spec.format](record)
                yield str(record.get("id", index)), f"{question} {choices[gold]}"
        elif spec.kind == "choice":
            for index, inst in enumerate(load_choice_instances(spec.format, spec.path, "rc")):
                yield inst.id or str(index), "".join(inst.requests[inst.gold])
        elif spec.kind == "generate":
            for index, record in enumerate(read_records(spec.path)):
                yield str(record.get("id", index)), f"{record['question']} {record['answer']}"
        elif spec.kind == "perplexity":
            for index, doc in enumerate(read_records(spec.path)):
                yield str(doc.get("id", index)), doc["text"]
        else:
            raise InputError(f"task {spec.name!r}: a {spec.kind} task has no items to look for")
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"{spec.path}: not task {spec.name!r}'s {spec.format} format "
                         f"({err!r})") from None


def all_item_texts(specs: Mapping[str, Mapping]) -> Iterator[tuple[str, str, str]]:
    """(task, item id, text) of every item of every task in `specs` (name → spec)."""
    for name, values in specs.items():
        for item, text in item_texts(TaskSpec.from_config(name, dict(values))):
            yield name, item, text


def task_files(specs: Mapping[str, Mapping] | None) -> list[str]:
    """The files the tasks' items are read from (for a job's lineage record)."""
    return sorted({spec["path"] for spec in (specs or {}).values()})

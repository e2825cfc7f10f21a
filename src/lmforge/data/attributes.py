"""The one contract of every attribute producer (taggers, dedup, decontamination, quality).

A step declares only its per-document (`tag`) or per-batch (`tag_batch`) work: for each
document, its spans by attribute type, `{type: [(start, end, score), ...]}`. `run_step` does
the rest in one place, as dolma's tagger runner and datatrove's pipeline do: it reads each
documents shard in order, feeds the step batches, builds the `<step>__<type>` keys, rounds the
scores to the step's precision, counts documents and the documents carrying each attribute,
and writes one Dolma attribute file per shard atomically, rows in the documents' order.
Global steps (dedup) keep their state across shards: the shards are run in order.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from lmforge.io.storage import jsonl_gz_writer, read_jsonl
from lmforge.settings import Section

log = logging.getLogger(__name__)

Span = tuple[int, int, float]
Spans = dict[str, list[Span]]  # attribute type → spans, one document's result


def attribute_key(step: str, kind: str) -> str:
    """Dolma's attribute name: `<tagger>__<type>`."""
    return f"{step}__{kind}"


class AttributeStep:
    """Subclasses set `name` (the key prefix) and implement `tag` or `tag_batch`."""

    name: str
    score_digits = 6  # the scores' precision in the attribute file
    batch_size = 256
    Config: type[Section] | None = None  # the step's config section, if it has one

    def __init__(self, cfg: Section | Mapping | None = None) -> None:
        self.cfg = self.Config.of(cfg) if self.Config else None
        self.counts: Counter = Counter()  # the step's own numbers, reported with the run's

    def begin_shard(self, index: int, docs_path: str | Path) -> None:
        """Called before each shard's documents (a global step may need the position)."""

    def tag(self, doc: dict) -> Spans:
        raise NotImplementedError

    def tag_batch(self, docs: list[dict]) -> list[Spans]:
        return [self.tag(doc) for doc in docs]

    def tag_document(self, doc: dict) -> dict:
        """One document's attributes as `run_step` writes them."""
        return self.attributes(self.tag_batch([doc])[0])

    def attributes(self, spans: Spans) -> dict:
        """One document's attributes as written: keyed, scores rounded, empty types left out."""
        return {attribute_key(self.name, kind): [[start, end, round(score, self.score_digits)]
                                                 for start, end, score in found]
                for kind, found in spans.items() if found}


TAGGERS: dict[str, type[AttributeStep]] = {}


def register_tagger(name: str) -> Callable[[type[AttributeStep]], type[AttributeStep]]:
    """Register a tagger class under `name` (its attributes are `<name>__<type>`)."""

    def register(cls: type[AttributeStep]) -> type[AttributeStep]:
        if name in TAGGERS:
            raise ValueError(f"tagger {name} is registered twice")
        cls.name = name
        TAGGERS[name] = cls
        return cls

    return register


def _batches(docs_path, size: int):
    batch: list[dict] = []
    for doc in read_jsonl(docs_path):
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_step(step: AttributeStep, docs_paths: list, out_paths: list) -> dict:
    """Run `step` over the shards in order; returns the counts: documents, documents per
    attribute, and the step's own."""
    return run_steps([step], docs_paths, [out_paths])[0]


def run_steps(steps: list[AttributeStep], docs_paths: list, out_paths: list[list]) -> list[dict]:
    """Several steps over the same shards, each document read once (`out_paths[i]`: step i's
    files); each step's counts as `run_step` returns them."""
    if any(len(outs) != len(docs_paths) for outs in out_paths):
        raise ValueError(f"{len(docs_paths)} shards need as many attribute files per step")
    counts = [Counter(documents=0) for _ in steps]  # an empty shard still reports 0 documents
    batch_size = min(step.batch_size for step in steps)
    for index, docs_path in enumerate(docs_paths):
        for step in steps:
            step.begin_shard(index, docs_path)
        with contextlib.ExitStack() as files:
            writers = [files.enter_context(jsonl_gz_writer(outs[index])) for outs in out_paths]
            for batch in _batches(docs_path, batch_size):
                for step, step_counts, write in zip(steps, counts, writers, strict=True):
                    for doc, spans in zip(batch, step.tag_batch(batch), strict=True):
                        attributes = step.attributes(spans)
                        step_counts["documents"] += 1
                        step_counts.update(attributes.keys())
                        write({"id": doc["id"], "source": doc.get("source"),
                               "attributes": attributes})
        log.info("%s: %s done (%d documents so far)", ", ".join(step.name for step in steps),
                 Path(str(docs_path)).name, counts[0]["documents"])
    return [{**dict(sorted(step_counts.items())), **step.counts}
            for step, step_counts in zip(steps, counts, strict=True)]

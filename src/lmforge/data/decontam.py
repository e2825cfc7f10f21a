"""Decontamination: n-gram overlap of every paragraph with the evaluation sets.

The items are those of every task the workflow evaluates on (`lmforge.eval.items`: the
generated tasks, the benchmarks of `evaluate.extra_tasks`, reference documents), but the
held-out splits of the corpus itself. Items are normalised like the documents (lower case,
punctuation removed) and cut into word n-grams; an item shorter than n contributes itself whole.
A paragraph containing any of those n-grams gets a `decontam__overlap` span scored by the share
of its n-grams that are task n-grams, and the mixer can drop the document (or the span) on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.attributes import AttributeStep, Spans, attribute_key, run_step
from lmforge.data.text import normalized_words, paragraph_spans
from lmforge.eval.items import all_item_texts, task_files
from lmforge.runner import CFG, OUT, arg, command, json_object
from lmforge.settings import Section


@dataclass(frozen=True)
class DecontamConfig(Section):
    SECTION = "curate.decontam"

    ngram: int  # words per n-gram shared with an evaluation item


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def task_ngrams(specs: Mapping[str, Mapping], n: int) -> tuple[set[tuple[str, ...]], set[int]]:
    """All n-grams of the items of every task in `specs` (name → spec), and the lengths of
    items shorter than n."""
    grams: set[tuple[str, ...]] = set()
    short_lengths: set[int] = set()
    for _task, _item, text in all_item_texts(specs):
        words = normalized_words(text)
        grams |= _ngrams(words, n)
        if len(words) < n:
            short_lengths.add(len(words))
    return grams, short_lengths


def paragraph_overlap(paragraph: str, grams: set, n: int, short_lengths: set[int]) -> float:
    words = normalized_words(paragraph)
    candidates = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    hits = sum(gram in grams for gram in candidates)
    for length in short_lengths:  # whole short items (e.g. "what is 3 4 answer 7")
        hits += sum(tuple(words[i : i + length]) in grams
                    for i in range(len(words) - length + 1))
    return hits / max(len(candidates), 1)


class Contamination(AttributeStep):
    """`decontam__overlap` spans: paragraphs holding task n-grams, scored by their share."""

    name = "decontam"
    score_digits = 4
    Config = DecontamConfig

    def __init__(self, specs: Mapping[str, Mapping], cfg: DecontamConfig | Mapping):
        super().__init__(cfg)
        self.grams, self.short_lengths = task_ngrams(specs, self.cfg.ngram)

    def tag(self, doc: dict) -> Spans:
        spans = []
        for start, end, paragraph in paragraph_spans(doc["text"]):
            score = paragraph_overlap(paragraph, self.grams, self.cfg.ngram, self.short_lengths)
            if score > 0:
                spans.append((start, end, score))
        self.counts["contaminated_paragraphs"] += len(spans)
        return {"overlap": spans}


def decontaminate(docs_path, specs: Mapping[str, Mapping], out_path,
                  cfg: DecontamConfig | Mapping) -> dict:
    counts = run_step(Contamination(specs, cfg), [docs_path], [out_path])
    return {"documents": counts["documents"],
            "contaminated_documents": counts.get(attribute_key("decontam", "overlap"), 0),
            "contaminated_paragraphs": counts.get("contaminated_paragraphs", 0)}


TASKS = arg("--tasks", type=json_object,
            help="the tasks to look for, as JSON: name → evaluation spec (lmforge.eval.specs)")


@command("decontam", arg("--docs"), TASKS, OUT, CFG,
         job=lambda args: f"decontam/{Path(args.out).name}",
         params=lambda args: {**args.cfg, "tasks": sorted(args.tasks)},
         inputs=("docs", "task_files"), outputs=("out",))
def decontam_command(args, job) -> dict:
    """Spans of one documents shard that hold evaluation items."""
    args.task_files = task_files(args.tasks)
    return decontaminate(args.docs, args.tasks, args.out, args.cfg)

"""Decontamination: n-gram overlap of every paragraph with the evaluation sets.

Items are normalised like the documents (lower case, punctuation removed) and cut into word
n-grams; an item shorter than n contributes itself whole. A paragraph containing any of those
n-grams gets a `decontam__overlap` span scored by the share of its n-grams that are task n-grams,
and the mixer can drop the document (or the span) on it.
"""

from __future__ import annotations

from pathlib import Path

from lmforge import tasks
from lmforge.dedup import normalized_words, paragraph_spans
from lmforge.storage import attribute_row, read_jsonl, write_jsonl_gz


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def task_ngrams(task_dir: str | Path, n: int) -> tuple[set[tuple[str, ...]], set[int]]:
    """All n-grams of all task items, and the lengths of items shorter than n."""
    grams: set[tuple[str, ...]] = set()
    short_lengths: set[int] = set()
    for name in tasks.TASK_NAMES:
        for item in tasks.load_task(Path(task_dir) / f"{name}.jsonl.gz"):
            words = normalized_words(tasks.item_text(name, item))
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


def decontaminate(docs_path, task_dir, out_path, cfg: dict) -> dict:
    n = cfg["ngram"]
    grams, short_lengths = task_ngrams(task_dir, n)
    stats = {"documents": 0, "contaminated_documents": 0, "contaminated_paragraphs": 0}

    def rows():
        for doc in read_jsonl(docs_path):
            spans = []
            for start, end, paragraph in paragraph_spans(doc["text"]):
                score = paragraph_overlap(paragraph, grams, n, short_lengths)
                if score > 0:
                    spans.append([start, end, round(score, 4)])
            stats["documents"] += 1
            stats["contaminated_documents"] += bool(spans)
            stats["contaminated_paragraphs"] += len(spans)
            yield attribute_row(doc, {"decontam__overlap": spans} if spans else {})

    write_jsonl_gz(out_path, rows())
    return stats

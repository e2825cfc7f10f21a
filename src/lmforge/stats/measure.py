"""The per-document pass of the corpus analyses: what needs a model, a regex DuckDB's RE2
cannot run, or set look-ups — tokenizer tokens, PII matches by type, toxic sentences and the
evaluation items a document contains — one job per shard (`stats-measure`), each writing a
parquet file that the DuckDB analyses join."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data import pii
from lmforge.io.storage import atomic_path, read_jsonl
from lmforge.stats.config import StatsConfig

PII_KINDS = tuple(pii.PATTERNS)
# Typed, so that an empty shard or one without a match still has the columns the DuckDB
# analyses read (inferred from no values, they would be NULL-typed).
SCHEMA = pa.schema([
    ("id", pa.string()), ("tokenizer_tokens", pa.int64()),
    *((f"pii_{kind}", pa.int64()) for kind in PII_KINDS),
    ("toxic_sentences", pa.int64()), ("items_ngram", pa.list_(pa.string())),
    ("items_exact", pa.list_(pa.string())),
])


def task_index(specs: dict | None, n: int) -> tuple[dict, dict]:
    """n-gram → item keys, and item key (`task/item`) → (task, normalised words), for every
    item of the tasks in `specs` (name → evaluation spec; see lmforge.eval.items)."""
    from lmforge.data.text import normalized_words
    from lmforge.eval.items import all_item_texts

    grams: dict[tuple[str, ...], set[str]] = {}
    items: dict[str, tuple[str, str]] = {}
    for task, item, text in all_item_texts(specs or {}):
        key = f"{task}/{item}"
        words = normalized_words(text)
        items[key] = (task, words)
        # An item shorter than n is one key, as in decontamination.
        for gram in [tuple(words[i:i + n]) for i in range(len(words) - n + 1)] or [tuple(words)]:
            grams.setdefault(gram, set()).add(key)
    return grams, items


def contained_items(text: str, grams: dict, items: dict, n: int, short: set[int]):
    """Evaluation items sharing an n-gram with the text (short items: whole), and those of
    them found verbatim; words normalised as in decontamination. Set look-ups in Python: a
    DuckDB join on zipped 13-gram tuples measured slower."""
    from lmforge.data.text import normalized_words

    words = normalized_words(text)
    found: set[str] = set()
    for length in {n} | short:
        for i in range(len(words) - length + 1):
            hit = grams.get(tuple(words[i:i + length]))
            if hit:
                found |= hit
    if not found:
        return [], []
    normalized = " ".join(words)
    exact = [item for item in found if " ".join(items[item][1]) in normalized]
    return sorted(found), sorted(exact)


def measure_shard(paths: list[str], out_path, tokenizer_path, tasks: dict | None,
                  cfg: StatsConfig) -> int:
    """One shard's (its files') measurements as a parquet file; returns the documents."""
    from lmforge.data.taggers.toxic import ToxicTagger

    tokenizer = None
    if tokenizer_path:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    n = cfg.contamination_ngram
    grams, items = task_index(tasks, n)
    short = {len(key) for key in grams if len(key) < n}
    toxic_cfg = {"sentence_threshold": cfg.toxic_sentence_threshold, "max_toxic_fraction": 1.0}
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    batch: list[dict] = []

    def flush():
        if tokenizer is not None:
            encoded = tokenizer.encode_batch([doc["text"] for doc in batch])
            columns["tokenizer_tokens"] += [len(e.ids) for e in encoded]
        else:
            columns["tokenizer_tokens"] += [None] * len(batch)
        toxic = ToxicTagger(toxic_cfg).tag_batch(batch)
        for doc, toxic_attrs in zip(batch, toxic):
            columns["id"].append(doc["id"])
            found = pii.find(doc["text"])
            for kind in PII_KINDS:
                columns[f"pii_{kind}"].append(len(found[kind]))
            columns["toxic_sentences"].append(len(toxic_attrs["sentence"]))
            ngram_items, exact_items = contained_items(doc["text"], grams, items, n, short)
            columns["items_ngram"].append(ngram_items)
            columns["items_exact"].append(exact_items)
        batch.clear()

    for path in paths:
        for doc in read_jsonl(path):
            batch.append(doc)
            if len(batch) == 256:
                flush()
    flush()
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp)
    return len(columns["id"])


def _measure_job(job: tuple) -> int:
    return measure_shard(*job)


def measure_documents(paths: list[str], out_dir: Path, tokenizer, tasks, cfg: StatsConfig,
                      workers: int) -> list[Path]:
    """The pass on one machine, one process per file: `out_dir/measured/*.parquet`."""
    out = [out_dir / "measured" / f"{i:05d}.parquet" for i in range(len(paths))]
    jobs = [([str(p)], str(o), tokenizer, tasks, cfg) for p, o in zip(paths, out, strict=True)]
    if workers > 1 and len(jobs) > 1:
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            list(pool.map(_measure_job, jobs))
    else:
        for job in jobs:
            _measure_job(job)
    return out

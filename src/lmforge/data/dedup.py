"""Global deduplication as scatter/gather jobs, with memory per job set by the config.

Dolma's semantics: shards are read in order and the first occurrence is kept; later copies get
spans. No job holds the keys of the whole corpus. The work is split as datatrove and NeMo
Curator split it:

1. `write_keys`, one job per shard: a 128-bit digest of each key (the text, the normalised URL,
   each paragraph or paragraph n-gram) with its *unit*, the document's or paragraph's place in
   corpus order (`shard index << 32 | index in the shard`). Keys go into `partitions` bucket
   files by their digest.
2. `find_later_copies`, one job per bucket: DuckDB, out of core under its memory limit, finds
   every unit holding a key first seen in an earlier unit, and how many such keys it holds.
3. `write_attributes`, one job per shard: reads its units' counts from every bucket and writes
   the Dolma attribute files, in the documents' order.

Near duplicates (MinHash) follow the same plan in `lmforge.data.minhash`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data.attributes import AttributeStep, Spans, attribute_key, run_steps
from lmforge.data.text import paragraph_spans
from lmforge.io.duck import DuckDBConfig, connect, sql_list, sql_string
from lmforge.io.storage import atomic_dir, read_jsonl
from lmforge.runner import CFG, OUT_DIR, arg, command
from lmforge.settings import Section

log = logging.getLogger(__name__)

UNIT_BITS = 32  # units per shard < 2**32; a unit's shard is `unit >> UNIT_BITS`
KEY_SCHEMA = pa.schema([("h1", pa.uint64()), ("h2", pa.uint64()), ("unit", pa.int64())])


@dataclass(frozen=True)
class NgramOverlapConfig(Section):
    SECTION = "curate.dedup.paragraphs.by_ngram"

    ngram_length: int
    stride: int
    overlap_threshold: float
    skip_short_paragraphs: bool


@dataclass(frozen=True)
class ParagraphDedupConfig(Section):
    SECTION = "curate.dedup.paragraphs"

    by_ngram: NgramOverlapConfig | None = None  # None: whole paragraphs are the keys


@dataclass(frozen=True)
class MinhashConfig(Section):
    SECTION = "curate.dedup.minhash"

    ngram: int
    bands: int
    rows: int
    seed: int
    min_jaccard: float


@dataclass(frozen=True)
class DedupConfig(Section):
    SECTION = "curate.dedup"

    partitions: int  # bucket jobs; grow it with the corpus to keep each job's memory flat
    duckdb: DuckDBConfig
    minhash: MinhashConfig
    paragraphs: ParagraphDedupConfig = field(default_factory=ParagraphDedupConfig)

    def __post_init__(self):
        if self.partitions < 1:
            raise ValueError(f"{self.SECTION}.partitions must be at least 1")


def normalize_url(url: str) -> str:
    """Scheme- and case-insensitive host, no fragment, no trailing slash: one page, one key."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/") or "/"
    return urlunsplit(("", parts.netloc.lower().removeprefix("www."), path, parts.query, ""))


# Whole-document keys; the paragraph keys come from `paragraph_keys`.
KEYS: dict[str, Callable[[dict], str]] = {
    "dedup_exact": lambda doc: doc["text"],
    "dedup_url": lambda doc: normalize_url(doc.get("metadata", {}).get("url", "") or doc["id"]),
}
PARAGRAPHS = "dedup_para"
METHODS = (*KEYS, PARAGRAPHS)


def paragraph_ngrams(paragraph: str, cfg: NgramOverlapConfig) -> list[str]:
    """dolma's `by_ngram` keys: word n-grams every `stride` words; a paragraph shorter than n
    is one key unless `skip_short_paragraphs`."""
    words = paragraph.split()
    n = cfg.ngram_length
    if len(words) < n:
        return [] if cfg.skip_short_paragraphs else [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(0, len(words) - n + 1, cfg.stride)]


def paragraph_keys(text: str, cfg: ParagraphDedupConfig) -> Iterator[tuple[int, int, list[str]]]:
    """Each non-blank paragraph's span and keys: itself, or its n-grams with `by_ngram`."""
    for start, end, paragraph in paragraph_spans(text):
        if paragraph.strip():
            yield start, end, (paragraph_ngrams(paragraph, cfg.by_ngram) if cfg.by_ngram
                               else [paragraph])


def digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


class KeyWriter:
    """Collects one shard's (digest, unit) keys and writes them as `partitions` bucket files,
    bucket `h1 % partitions`. A shard's keys are bounded by the shard, not the corpus."""

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.digests = bytearray()
        self.units: list[int] = []

    def add(self, key: bytes, unit: int) -> None:
        self.digests += key
        self.units.append(unit)

    def write(self, out_dir: Path, name: str) -> int:
        pairs = np.frombuffer(bytes(self.digests), dtype="<u8").reshape(-1, 2)
        units = np.array(self.units, dtype=np.int64)
        write_buckets(out_dir, name, self.partitions, pairs[:, 0],
                      [pairs[:, 0], pairs[:, 1], units], KEY_SCHEMA)
        return len(units)


def write_buckets(out_dir: Path, name: str, partitions: int, digest: np.ndarray,
                  columns: list[np.ndarray], schema: pa.Schema) -> None:
    """Rows into `partitions` files by `digest % partitions`, each in the rows' order (one
    stable sort, not one pass per bucket)."""
    bucket_of = digest % partitions
    order = np.argsort(bucket_of, kind="stable")
    bounds = np.searchsorted(bucket_of[order], np.arange(partitions + 1))
    for bucket in range(partitions):
        rows = order[bounds[bucket]:bounds[bucket + 1]]
        pq.write_table(pa.table([column[rows] for column in columns], schema=schema),
                       out_dir / bucket_file(name, bucket))


def bucket_file(name: str, bucket: int) -> str:
    return f"{name}-{bucket:04d}.parquet"


def write_keys(docs_path, shard_index: int, out_dir, cfg: DedupConfig | Mapping) -> dict:
    """Scatter: the shard's keys for every method, split into bucket files in `out_dir`."""
    cfg = DedupConfig.of(cfg)
    base = shard_index << UNIT_BITS
    writers = {method: KeyWriter(cfg.partitions) for method in METHODS}
    paragraphs = 0
    documents = 0
    for position, doc in enumerate(read_jsonl(docs_path)):
        documents += 1
        for method, key_of in KEYS.items():
            writers[method].add(digest(key_of(doc)), base + position)
        for _start, _end, keys in paragraph_keys(doc["text"], cfg.paragraphs):
            for key in keys:
                writers[PARAGRAPHS].add(digest(key), base + paragraphs)
            paragraphs += 1
    if documents >= 1 << UNIT_BITS or paragraphs >= 1 << UNIT_BITS:
        raise ValueError(f"{docs_path}: more than 2**{UNIT_BITS} units in one shard")
    with atomic_dir(out_dir) as tmp:
        counts = {f"{method}_keys": writer.write(tmp, method) for method, writer in
                  writers.items()}
    return {"documents": documents, "paragraphs": paragraphs, **counts}


def find_later_copies(key_dirs: list, bucket: int, out_dir, cfg: DedupConfig | Mapping) -> dict:
    """Gather one bucket: for every method, each unit holding keys first seen in an earlier
    unit, with how many (`seen`), sorted by unit. DuckDB spills past its memory limit."""
    cfg = DedupConfig.of(cfg)
    con = connect(cfg.duckdb)
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for method in METHODS:
            files = [Path(d) / bucket_file(method, bucket) for d in key_dirs]
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE later AS
                WITH keys AS (SELECT h1, h2, unit FROM read_parquet({sql_list(files)})),
                     first AS (SELECT h1, h2, min(unit) AS first FROM keys GROUP BY h1, h2
                               HAVING count(*) > 1)
                SELECT unit, count(*)::INTEGER AS seen
                FROM keys JOIN first USING (h1, h2) WHERE unit > first GROUP BY unit""")
            # Written by DuckDB (streamed, sorted by unit so a shard's rows are one range).
            con.execute(f"COPY (SELECT * FROM later ORDER BY unit) TO "
                        f"{sql_string(str(tmp / f'{method}.parquet'))} (FORMAT parquet)")
            counts[f"{method}_units"] = con.execute("SELECT count(*) FROM later").fetchone()[0]
    con.close()
    return counts


def units_of_shard(files: list, shard_index: int, value: str, cfg: DuckDBConfig) -> dict:
    """`{index in the shard: value}` of the shard's rows in the per-unit files (summed over
    the files): one shard's worth, read with the files' unit ranges pruning the rest."""
    con = connect(cfg)
    low = shard_index << UNIT_BITS
    rows = con.execute(
        f"SELECT unit - {low} AS local, sum({value}) FROM read_parquet({sql_list(files)}) "
        f"WHERE unit >= {low} AND unit < {low + (1 << UNIT_BITS)} GROUP BY unit"
    ).fetchall()
    con.close()
    return dict(rows)


def check_fresh(units: dict, count: int, docs_path) -> None:
    """Decisions about units the shard does not have: it changed after its keys were made."""
    if units and max(units) >= count:
        raise ValueError(f"{docs_path}: dedup decisions are stale (the shard has {count} "
                         f"units, decisions name unit {max(units)})")


class LaterCopies(AttributeStep):
    """`<method>__duplicate` over a document whose key was seen in an earlier document."""

    def __init__(self, method: str, later: dict[int, int]):
        super().__init__()
        self.name, self.later, self.position = method, later, 0

    def tag(self, doc: dict) -> Spans:
        position, self.position = self.position, self.position + 1
        return {"duplicate": [(0, len(doc["text"]), 1.0)]} if position in self.later else {}


class ParagraphCopies(AttributeStep):
    """`dedup_para__paragraph` spans over paragraphs seen before. With `by_ngram`, a paragraph
    is a duplicate when at least `overlap_threshold` of its n-grams were seen in earlier
    paragraphs, and the span's score is that share (dolma's partial-overlap mode)."""

    name = PARAGRAPHS
    score_digits = 4

    def __init__(self, seen: dict[int, int], cfg: ParagraphDedupConfig):
        super().__init__()
        self.seen, self.paragraphs, self.keys_cfg = seen, 0, cfg
        self.by_ngram = cfg.by_ngram

    def tag(self, doc: dict) -> Spans:
        spans = []
        for start, end, keys in paragraph_keys(doc["text"], self.keys_cfg):
            seen = self.seen.get(self.paragraphs, 0)
            self.paragraphs += 1
            if not self.by_ngram:
                if seen:
                    spans.append((start, end, 1))
            elif keys and seen / len(keys) >= self.by_ngram.overlap_threshold:
                spans.append((start, end, seen / len(keys)))
        self.counts["paragraphs"] = self.paragraphs
        self.counts["duplicate_paragraphs"] += len(spans)
        self.counts["documents_with_duplicates"] += bool(spans)
        return {"paragraph": spans}


def write_attributes(docs_path, shard_index: int, later_dirs: list, outs: Mapping[str, str],
                     cfg: DedupConfig | Mapping) -> dict:
    """One shard's attribute file per method, from every bucket's later copies."""
    cfg = DedupConfig.of(cfg)
    later = {method: units_of_shard([Path(d) / f"{method}.parquet" for d in later_dirs],
                                    shard_index, "seen", cfg.duckdb) for method in METHODS}
    steps = [ParagraphCopies(later[method], cfg.paragraphs) if method == PARAGRAPHS
             else LaterCopies(method, later[method]) for method in METHODS]
    results = run_steps(steps, [docs_path], [[outs[method]] for method in METHODS])
    metrics = {}
    for method, step, counts in zip(METHODS, steps, results, strict=True):
        check_fresh(later[method], counts.get("paragraphs", 0) if method == PARAGRAPHS
                    else counts["documents"], docs_path)
        metrics["documents"] = counts["documents"]
        metrics[f"{method}.duplicates"] = counts.get(attribute_key(step.name, "duplicate"),
                                                     counts.get("duplicate_paragraphs", 0))
        if method == PARAGRAPHS:
            metrics[f"{method}.paragraphs"] = counts.get("paragraphs", 0)
            metrics[f"{method}.documents_with_duplicates"] = counts.get(
                "documents_with_duplicates", 0)
    return metrics


def deduplicate(docs_paths: list, outs: Mapping[str, list], work_dir,
                cfg: DedupConfig | Mapping) -> dict:
    """Every step in this process, shard after shard and bucket after bucket: the workflow's
    jobs run in sequence (tests, benchmarks, a corpus that fits one machine)."""
    cfg = DedupConfig.of(cfg)
    work_dir = Path(work_dir)
    key_dirs = [work_dir / "keys" / f"{i:05d}" for i in range(len(docs_paths))]
    later_dirs = [work_dir / "later" / f"bucket-{b:04d}" for b in range(cfg.partitions)]
    for index, (docs, keys) in enumerate(zip(docs_paths, key_dirs, strict=True)):
        write_keys(docs, index, keys, cfg)
    for bucket, later in enumerate(later_dirs):
        find_later_copies(key_dirs, bucket, later, cfg)
    totals: dict = {}
    for index, docs in enumerate(docs_paths):
        shard_outs = {method: outs[method][index] for method in METHODS}
        for key, value in write_attributes(docs, index, later_dirs, shard_outs, cfg).items():
            totals[key] = totals.get(key, 0) + value
    return totals


@command("dedup-keys", arg("--docs"), arg("--shard-index", type=int), OUT_DIR, CFG,
         job=lambda args: f"dedup/keys/{Path(args.out_dir).name}", inputs=("docs",),
         outputs=("out_dir",))
def dedup_keys_command(args, job) -> dict:
    """Scatter one shard's dedup keys (text, URL, paragraphs) into bucket files."""
    return write_keys(args.docs, args.shard_index, args.out_dir, args.cfg)


@command("dedup-bucket", arg("--keys", nargs="+"), arg("--bucket", type=int), OUT_DIR, CFG,
         job=lambda args: f"dedup/bucket-{args.bucket:04d}", inputs=("keys",),
         outputs=("out_dir",))
def dedup_bucket_command(args, job) -> dict:
    """One bucket's later copies of every key, across all shards."""
    return find_later_copies(args.keys, args.bucket, args.out_dir, args.cfg)


@command("dedup", arg("--docs"), arg("--shard-index", type=int), arg("--later", nargs="+"),
         *(arg(f"--out-{method.removeprefix('dedup_')}") for method in METHODS), CFG,
         job=lambda args: f"dedup/{Path(args.docs).name.split('.')[0]}",
         inputs=("docs", "later"),
         outputs=tuple(f"out_{method.removeprefix('dedup_')}" for method in METHODS))
def dedup_command(args, job) -> dict:
    """One shard's exact, URL and paragraph duplicate attributes."""
    outs = {method: getattr(args, f"out_{method.removeprefix('dedup_')}") for method in METHODS}
    stats = write_attributes(args.docs, args.shard_index, args.later, outs, args.cfg)
    log.info("dedup: %s", stats)
    return stats


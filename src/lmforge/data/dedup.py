"""Global deduplication across all shards, written as attributes.

Dolma semantics throughout: shards are read in order and the first occurrence is kept; later
copies get spans. Exact document and URL keys go in exact hash sets; paragraphs go in a Bloom
filter whose size comes from the expected count and false-positive rate in the config, so its
memory is bounded by the config, not the corpus; near-duplicate documents are found with
MinHash-LSH, the signatures computed per shard in parallel jobs and the bands resolved globally.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from lmforge.data.attributes import AttributeStep, Spans, attribute_key, run_step
from lmforge.io.storage import atomic_path, read_jsonl
from lmforge.runner import CFG, DOCS, OUT, OUTS, arg, command
from lmforge.settings import Section


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

    expected_paragraphs: int
    false_positive_rate: float
    by_ngram: NgramOverlapConfig | None = None  # None: exact paragraphs


@dataclass(frozen=True)
class MinhashConfig(Section):
    SECTION = "curate.dedup.minhash"

    ngram: int
    bands: int
    rows: int
    seed: int
    min_jaccard: float


def normalize_url(url: str) -> str:
    """Scheme- and case-insensitive host, no fragment, no trailing slash: one page, one key."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/") or "/"
    return urlunsplit(("", parts.netloc.lower().removeprefix("www."), path, parts.query, ""))


KEYS: dict[str, Callable[[dict], str]] = {
    "dedup_exact": lambda doc: doc["text"],
    "dedup_url": lambda doc: normalize_url(doc.get("metadata", {}).get("url", "") or doc["id"]),
}


class ExactDuplicates(AttributeStep):
    """Later copies of a key seen earlier in shard order: `<method>__duplicate` over the
    document. Keys are 16-byte digests in one set."""

    def __init__(self, method: str):
        super().__init__()
        self.name, self.key_of, self.seen = method, KEYS[method], set()

    def tag(self, doc: dict) -> Spans:
        digest = hashlib.blake2b(self.key_of(doc).encode("utf-8"), digest_size=16).digest()
        if digest in self.seen:
            return {"duplicate": [(0, len(doc["text"]), 1.0)]}
        self.seen.add(digest)
        return {}


def dedup(method: str, docs_paths: list[str | Path], out_paths: list[str | Path]) -> dict:
    if len(docs_paths) != len(out_paths):
        raise ValueError("one attribute output per documents shard is required")
    counts = run_step(ExactDuplicates(method), docs_paths, out_paths)
    return {"documents": counts["documents"],
            "duplicates": counts.get(attribute_key(method, "duplicate"), 0)}


def _hash128(text: str) -> int:
    # rbloom's default hash is Python's salted hash(); a keyed digest keeps runs identical.
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest, "big", signed=True)


def paragraph_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """Dolma's paragraphs: lines split on "\n", each span including its newline. Like dolma,
    the last line's span also counts one newline, so it may end one past the text."""
    offset = 0
    for paragraph in text.split("\n"):
        start = offset
        offset += len(paragraph) + 1
        yield start, offset, paragraph


def _paragraph_ngrams(paragraph: str, cfg: NgramOverlapConfig) -> list[str]:
    """dolma's `by_ngram` keys: word n-grams every `stride` words; a paragraph shorter than n
    is one key unless `skip_short_paragraphs`."""
    words = paragraph.split()
    n = cfg.ngram_length
    if len(words) < n:
        return [] if cfg.skip_short_paragraphs else [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(0, len(words) - n + 1, cfg.stride)]


def _ngram_overlap(paragraph: str, bloom, cfg: NgramOverlapConfig) -> float | None:
    """Share of the paragraph's n-grams already in the filter (then all are added)."""
    grams = _paragraph_ngrams(paragraph, cfg)
    if not grams:
        return None
    seen = sum(gram in bloom for gram in grams)
    for gram in grams:
        bloom.add(gram)
    return seen / len(grams)


class ParagraphDuplicates(AttributeStep):
    """First occurrence of each paragraph kept; later copies get `dedup_para__paragraph` spans.
    With `by_ngram`, a paragraph is a duplicate when at least `overlap_threshold` of its n-grams
    were seen before, and the span's score is that share (dolma's partial-overlap mode)."""

    name = "dedup_para"
    score_digits = 4
    Config = ParagraphDedupConfig

    def __init__(self, cfg: ParagraphDedupConfig | Mapping):
        from rbloom import Bloom

        super().__init__(cfg)
        self.bloom = Bloom(self.cfg.expected_paragraphs, self.cfg.false_positive_rate, _hash128)
        self.by_ngram = self.cfg.by_ngram

    def tag(self, doc: dict) -> Spans:
        spans = []
        for start, end, paragraph in paragraph_spans(doc["text"]):
            if not paragraph.strip():
                continue
            self.counts["paragraphs"] += 1
            if self.by_ngram:
                overlap = _ngram_overlap(paragraph, self.bloom, self.by_ngram)
                if overlap is not None and overlap >= self.by_ngram.overlap_threshold:
                    spans.append((start, end, overlap))
            elif paragraph in self.bloom:
                spans.append((start, end, 1))
            else:
                self.bloom.add(paragraph)
        self.counts["duplicate_paragraphs"] += len(spans)
        self.counts["documents_with_duplicates"] += bool(spans)
        return {"paragraph": spans}


def dedup_paragraphs(docs_paths: list, out_paths: list,
                     cfg: ParagraphDedupConfig | Mapping) -> dict:
    step = ParagraphDuplicates(cfg)
    counts = run_step(step, docs_paths, out_paths)
    return {"documents": counts["documents"], "paragraphs": counts.get("paragraphs", 0),
            "duplicate_paragraphs": counts.get("duplicate_paragraphs", 0),
            "documents_with_duplicates": counts.get("documents_with_duplicates", 0),
            "bloom_bits": step.bloom.size_in_bits}


_NON_WORD = re.compile(r"[^\w\s]")


def normalized_words(text: str) -> list[str]:
    """Lower-cased words without punctuation (FineWeb's normalisation for MinHash)."""
    return _NON_WORD.sub(" ", text.lower()).split()


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the normalised text."""
    words = normalized_words(text)
    if len(words) < n:
        return [" ".join(words).encode("utf-8")]
    return sorted({" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)})


def minhash_signatures(docs_path, out_path, cfg: MinhashConfig | Mapping) -> dict:
    """One shard's MinHash signatures (uint64, bands × rows permutations) and document ids."""
    cfg = MinhashConfig.of(cfg)
    from datasketch import MinHash

    num_perm = cfg.bands * cfg.rows
    template = MinHash(num_perm=num_perm, seed=cfg.seed)
    ids, signatures = [], []
    for doc in read_jsonl(docs_path):
        minhash = template.copy()
        minhash.update_batch(shingles(doc["text"], cfg.ngram))
        ids.append(doc["id"])
        signatures.append(minhash.hashvalues.astype(np.uint64))
    matrix = np.stack(signatures) if signatures else np.zeros((0, num_perm), dtype=np.uint64)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(ids, dtype=str), signatures=matrix)
    return {"documents": len(ids), "num_perm": num_perm}


class NearDuplicates(AttributeStep):
    """LSH over all shards in order: a document sharing a band with an earlier one, and whose
    estimated Jaccard similarity to it reaches `min_jaccard`, is a near duplicate
    (`dedup_minhash__duplicate`, scored by that similarity)."""

    name = "dedup_minhash"
    score_digits = 4
    Config = MinhashConfig

    def __init__(self, signature_paths: list, cfg: MinhashConfig | Mapping):
        super().__init__(cfg)
        self.loaded = []
        for path in signature_paths:
            with np.load(path) as data:
                self.loaded.append((list(data["ids"]), data["signatures"]))
        self.buckets: dict[tuple[int, bytes], tuple[int, int]] = {}
        self.counts.update(duplicates=0, candidates_rejected=0)

    def begin_shard(self, index: int, docs_path) -> None:
        self.shard, self.docs_path, self.index = index, docs_path, 0

    def tag(self, doc: dict) -> Spans:
        ids, sigs = self.loaded[self.shard]
        index, self.index = self.index, self.index + 1
        if index >= len(ids) or doc["id"] != ids[index]:
            raise ValueError(f"{self.docs_path}: signatures are stale (document order differs)")
        per_band = self.cfg.rows
        keys = [(b, sigs[index, b * per_band : (b + 1) * per_band].tobytes())
                for b in range(self.cfg.bands)]
        best, collided = 0.0, False
        for key in keys:
            if key in self.buckets:
                other_shard, other_index = self.buckets[key]
                other = self.loaded[other_shard][1][other_index]
                best = max(best, float(np.mean(other == sigs[index])))
                collided = True
        # min_jaccard 0: any shared band decides (datatrove's rule), never no band.
        if collided and best >= self.cfg.min_jaccard:
            self.counts["duplicates"] += 1
            return {"duplicate": [(0, len(doc["text"]), best)]}
        self.counts["candidates_rejected"] += collided
        for key in keys:
            self.buckets.setdefault(key, (self.shard, index))
        return {}


def dedup_minhash(signature_paths: list, docs_paths: list, out_paths: list,
                  cfg: MinhashConfig | Mapping) -> dict:
    if len(signature_paths) != len(docs_paths):
        raise ValueError("one signatures file per documents shard is required")
    counts = run_step(NearDuplicates(signature_paths, cfg), docs_paths, out_paths)
    return {"documents": counts["documents"], "duplicates": counts["duplicates"],
            "candidates_rejected": counts["candidates_rejected"]}


log = logging.getLogger(__name__)


@command("dedup", arg("--method", choices=["dedup_exact", "dedup_url"]), DOCS, OUTS,
         job=lambda args: f"dedup/{args.method}",
         params=lambda args: {"method": args.method, "shards": len(args.docs)},
         inputs=("docs",), outputs=("out",))
def dedup_command(args, job) -> dict:
    """Exact or URL duplicates across every shard: later copies get a span."""
    stats = dedup(args.method, args.docs, args.out)
    log.info("%s: %s", args.method, stats)
    return stats


@command("dedup-paragraphs", DOCS, OUTS, CFG, job="dedup/dedup_para", inputs=("docs",),
         outputs=("out",))
def dedup_paragraphs_command(args, job) -> dict:
    """Repeated paragraphs across every shard (a Bloom filter)."""
    stats = dedup_paragraphs(args.docs, args.out, args.cfg)
    log.info("paragraph dedup: %s", stats)
    return stats


@command("minhash", arg("--docs"), OUT, CFG, job=lambda args: f"minhash/{Path(args.out).name}",
         inputs=("docs",), outputs=("out",))
def minhash_command(args, job) -> dict:
    """MinHash signatures of one documents shard."""
    return minhash_signatures(args.docs, args.out, args.cfg)


@command("dedup-minhash", arg("--signatures", nargs="+"), DOCS, OUTS, CFG,
         job="dedup/dedup_minhash", inputs=("signatures", "docs"), outputs=("out",))
def dedup_minhash_command(args, job) -> dict:
    """Near duplicates from the shards' MinHash signatures."""
    stats = dedup_minhash(args.signatures, args.docs, args.out, args.cfg)
    log.info("minhash dedup: %s", stats)
    return stats

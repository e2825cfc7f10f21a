"""Global deduplication across all shards, written as attributes.

Dolma semantics throughout: shards are read in order and the first occurrence is kept; later
copies get spans. Exact document and URL keys go in exact hash sets; paragraphs go in a Bloom
filter whose size comes from the expected count and false-positive rate in the config, so its
memory is bounded by the config, not the corpus; near-duplicate documents are found with
MinHash-LSH, the signatures computed per shard in parallel jobs and the bands resolved globally.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from lmforge.storage import atomic_path, attribute_row, read_jsonl, write_jsonl_gz


def normalize_url(url: str) -> str:
    """Scheme- and case-insensitive host, no fragment, no trailing slash: one page, one key."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/") or "/"
    return urlunsplit(("", parts.netloc.lower().removeprefix("www."), path, parts.query, ""))


KEYS: dict[str, Callable[[dict], str]] = {
    "dedup_exact": lambda doc: doc["text"],
    "dedup_url": lambda doc: normalize_url(doc.get("metadata", {}).get("url", "") or doc["id"]),
}


def dedup(method: str, docs_paths: list[str | Path], out_paths: list[str | Path]) -> dict:
    if len(docs_paths) != len(out_paths):
        raise ValueError("one attribute output per documents shard is required")
    key_of = KEYS[method]
    seen: set[bytes] = set()
    stats = {"documents": 0, "duplicates": 0}
    for docs_path, out_path in zip(docs_paths, out_paths):

        def rows(docs_path=docs_path):
            for doc in read_jsonl(docs_path):
                digest = hashlib.blake2b(key_of(doc).encode("utf-8"), digest_size=16).digest()
                attrs = {}
                if digest in seen:
                    attrs[f"{method}__duplicate"] = [[0, len(doc["text"]), 1.0]]
                    stats["duplicates"] += 1
                else:
                    seen.add(digest)
                stats["documents"] += 1
                yield attribute_row(doc, attrs)

        write_jsonl_gz(out_path, rows())
    return stats


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


def _paragraph_ngrams(paragraph: str, cfg: dict) -> list[str]:
    """dolma's `by_ngram` keys: word n-grams every `stride` words; a paragraph shorter than n
    is one key unless `skip_short_paragraphs`."""
    words = paragraph.split()
    n = cfg["ngram_length"]
    if len(words) < n:
        return [] if cfg["skip_short_paragraphs"] else [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(0, len(words) - n + 1, cfg["stride"])]


def _ngram_overlap(paragraph: str, bloom, cfg: dict) -> float | None:
    """Share of the paragraph's n-grams already in the filter (then all are added)."""
    grams = _paragraph_ngrams(paragraph, cfg)
    if not grams:
        return None
    seen = sum(gram in bloom for gram in grams)
    for gram in grams:
        bloom.add(gram)
    return seen / len(grams)


def dedup_paragraphs(docs_paths: list, out_paths: list, cfg: dict) -> dict:
    """First occurrence of each paragraph kept; later copies get `dedup_para__paragraph` spans.
    With `by_ngram`, a paragraph is a duplicate when at least `overlap_threshold` of its n-grams
    were seen before, and the span's score is that share (dolma's partial-overlap mode)."""
    from rbloom import Bloom

    bloom = Bloom(cfg["expected_paragraphs"], cfg["false_positive_rate"], _hash128)
    by_ngram = cfg.get("by_ngram")
    stats = {"documents": 0, "paragraphs": 0, "duplicate_paragraphs": 0,
             "documents_with_duplicates": 0, "bloom_bits": bloom.size_in_bits}
    for docs_path, out_path in zip(docs_paths, out_paths, strict=True):

        def rows(docs_path=docs_path):
            for doc in read_jsonl(docs_path):
                spans = []
                for start, end, paragraph in paragraph_spans(doc["text"]):
                    if not paragraph.strip():
                        continue
                    stats["paragraphs"] += 1
                    if by_ngram:
                        overlap = _ngram_overlap(paragraph, bloom, by_ngram)
                        if overlap is not None and overlap >= by_ngram["overlap_threshold"]:
                            spans.append([start, end, round(overlap, 4)])
                    elif paragraph in bloom:
                        spans.append([start, end, 1])
                    else:
                        bloom.add(paragraph)
                stats["documents"] += 1
                stats["duplicate_paragraphs"] += len(spans)
                stats["documents_with_duplicates"] += bool(spans)
                yield attribute_row(doc, {"dedup_para__paragraph": spans} if spans else {})

        write_jsonl_gz(out_path, rows())
    return stats


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


def minhash_signatures(docs_path, out_path, cfg: dict) -> dict:
    """One shard's MinHash signatures (uint64, bands × rows permutations) and document ids."""
    from datasketch import MinHash

    num_perm = cfg["bands"] * cfg["rows"]
    template = MinHash(num_perm=num_perm, seed=cfg["seed"])
    ids, signatures = [], []
    for doc in read_jsonl(docs_path):
        minhash = template.copy()
        minhash.update_batch(shingles(doc["text"], cfg["ngram"]))
        ids.append(doc["id"])
        signatures.append(minhash.hashvalues.astype(np.uint64))
    matrix = np.stack(signatures) if signatures else np.zeros((0, num_perm), dtype=np.uint64)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(ids, dtype=str), signatures=matrix)
    return {"documents": len(ids), "num_perm": num_perm}


def dedup_minhash(signature_paths: list, docs_paths: list, out_paths: list, cfg: dict) -> dict:
    """LSH over all shards in order: a document sharing a band with an earlier one, and whose
    estimated Jaccard similarity to it reaches `min_jaccard`, is a near duplicate."""
    bands, per_band = cfg["bands"], cfg["rows"]
    buckets: dict[tuple[int, bytes], tuple[int, int]] = {}
    loaded = []
    stats = {"documents": 0, "duplicates": 0, "candidates_rejected": 0}
    for shard, path in enumerate(signature_paths):
        with np.load(path) as data:
            loaded.append((list(data["ids"]), data["signatures"]))
    for shard, ((ids, sigs), docs_path, out_path) in enumerate(
        zip(loaded, docs_paths, out_paths, strict=True)
    ):

        def rows(shard=shard, ids=ids, sigs=sigs, docs_path=docs_path):
            for index, doc in enumerate(read_jsonl(docs_path)):
                if doc["id"] != ids[index]:
                    raise ValueError(f"{docs_path}: signatures are stale (document order differs)")
                keys = [(b, sigs[index, b * per_band : (b + 1) * per_band].tobytes())
                        for b in range(bands)]
                best, collided = 0.0, False
                for key in keys:
                    if key in buckets:
                        other_shard, other_index = buckets[key]
                        other = loaded[other_shard][1][other_index]
                        best = max(best, float(np.mean(other == sigs[index])))
                        collided = True
                attrs = {}
                # min_jaccard 0: any shared band decides (datatrove's rule), never no band.
                if collided and best >= cfg["min_jaccard"]:
                    attrs["dedup_minhash__duplicate"] = [[0, len(doc["text"]), round(best, 4)]]
                    stats["duplicates"] += 1
                else:
                    stats["candidates_rejected"] += collided
                    for key in keys:
                        buckets.setdefault(key, (shard, index))
                stats["documents"] += 1
                yield attribute_row(doc, attrs)

        write_jsonl_gz(out_path, rows())
    return stats

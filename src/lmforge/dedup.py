"""Global exact deduplication (document text and URL) across all shards, as attributes.

Dolma semantics: shards are read in order and the first occurrence is kept; every later copy
gets a `<method>__duplicate` span covering the document. One job sees every shard because a
duplicate may sit in another shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lmforge.storage import read_jsonl, write_jsonl_gz


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
                yield {"id": doc["id"], "source": doc.get("source"), "attributes": attrs}

        write_jsonl_gz(out_path, rows())
    return stats

"""Which files a crawl reads: local globs, URLs, Hub dataset globs, or a Common Crawl
`warc.paths` manifest.

Remote entries (http, https, s3) stay URLs; the workflow hands them to Snakemake's storage
plugins, which download them to the job that reads them. A Hub dataset glob
(`hf://datasets/<repo>@<revision>/<glob>`) becomes its files, each pinned to the commit the
revision resolved to; the workflow's `fetch_hub_dataset` jobs download them.
"""

from __future__ import annotations

import glob
import gzip
from pathlib import Path

from lmforge.io.storage import InputError

REMOTE_SCHEMES = ("http://", "https://", "s3://")
HUB_DATASETS = "hf://datasets/"


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)


def read_manifest(path: str | Path) -> list[str]:
    """Entries of a `warc.paths(.gz)` manifest as Common Crawl publishes it (one per line)."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the WARC manifest: {err}") from None


def warc_inputs(patterns: list[str], manifest: str | None = None, base_url: str = "",
                limit: int | None = None) -> list[str]:
    """Sorted, deduplicated WARC inputs: URLs as given, local patterns globbed, then the
    manifest's entries joined to `base_url`; the first `limit` of them when a limit is set.
    A local pattern that matches nothing is an error (a typo would otherwise shrink the
    crawl without a word)."""
    found: set[str] = set()
    for pattern in patterns:
        if pattern.startswith(HUB_DATASETS):
            from lmforge.io.hub import dataset_files

            matched = dataset_files(pattern)
        else:
            matched = [pattern] if is_remote(pattern) else glob.glob(pattern)
        if not matched:
            raise InputError(f"crawl input {pattern!r} matches no file")
        found.update(matched)
    paths = sorted(found)
    if manifest:
        joined = base_url.rstrip("/") + "/" if base_url else ""
        paths += [joined + entry.lstrip("/") if joined else entry
                  for entry in read_manifest(manifest)]
    return paths[:limit] if limit else paths

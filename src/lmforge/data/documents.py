"""Released corpora as the crawl (`crawl.source: documents`): Dolma, FineWeb, DCLM ... files
become Dolma documents shards, one per file, so a user starts from a published corpus and
skips extraction.

JSONL (plain, `.gz` or `.zst`) and parquet files are read in bounded batches; where the text,
id, URL and date live in a record is configured (`crawl.document_fields`, dotted paths for
nested fields, the first present of a list wins). A record without text, a malformed line or
one that is not UTF-8 is skipped and counted by reason; a file that cannot be read to its end
(a broken download) is an error naming the file and how far it got.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.io.storage import InputError, stable_hash, write_json, write_jsonl_gz
from lmforge.runner import CFG, OUT, arg, command
from lmforge.settings import Section

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".parquet")


@dataclass(frozen=True)
class DocumentFields(Section):
    SECTION = "crawl.document_fields"

    # Each a dotted path into the record, or a list of them (the first present wins).
    text: str | list[str] = "text"
    id: str | list[str] = "id"
    url: str | list[str] = field(default_factory=lambda: ["url", "metadata.url"])
    created: str | list[str] = field(default_factory=lambda: ["created", "date"])


def file_format(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: not a documents file (expected one of {', '.join(FORMATS)})")


def _zstd_chunks(raw) -> Iterator[bytes]:
    """Decompressed bytes of every zstd frame; a stream that ends inside a frame raises (the
    library's stream reader would return what it has and stop without a word)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor().decompressobj()
    pending = False  # compressed bytes fed to an unfinished frame
    while chunk := raw.read(1 << 20):
        while chunk:
            try:
                yield decompressor.decompress(chunk)
            except zstandard.ZstdError as err:
                raise OSError(f"corrupt zstd data ({err})") from None
            pending = not decompressor.eof
            chunk = decompressor.unused_data if decompressor.eof else b""
            if decompressor.eof:
                decompressor = zstandard.ZstdDecompressor().decompressobj()
    if pending:
        raise EOFError("the zstd stream ends inside a frame")


def _lines(path: Path, fmt: str) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        if fmt.endswith(".zst"):
            rest = b""
            for chunk in _zstd_chunks(raw):
                *lines, rest = (rest + chunk).split(b"\n")
                yield from lines
            if rest:
                yield rest
            return
        yield from gzip.GzipFile(fileobj=raw) if fmt.endswith(".gz") else raw


def _records(path: Path, skips: Counter) -> Iterator[dict]:
    fmt = file_format(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
        except Exception as err:  # pyarrow raises its own types for a truncated/corrupt file
            raise InputError(f"{path}: cannot read the parquet file ({err})") from None
        return
    number = 0
    try:
        for number, line in enumerate(_lines(path, fmt), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                skips["not_utf8"] += 1
                log.warning("%s:%d: skipped, not UTF-8", path, number)
                continue
            except json.JSONDecodeError as err:
                skips["malformed_json"] += 1
                log.warning("%s:%d: skipped, malformed JSON (%s)", path, number, err.msg)
                continue
            if not isinstance(record, dict):
                skips["not_an_object"] += 1
                continue
            yield record
    except (OSError, EOFError, zlib.error) as err:  # gzip/zstd: truncated or corrupt stream
        raise InputError(f"{path}: cannot be read past line {number} ({err}); "
                         "is the download complete?") from None


def _lookup(record: Mapping, paths: str | list[str]):
    for path in [paths] if isinstance(paths, str) else paths:
        value = record
        for key in path.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if value not in (None, ""):
            return value
    return None


def as_documents(path: str | Path, source: str, fields: DocumentFields, skips: Counter
                 ) -> Iterator[dict]:
    """The file's records as Dolma documents, in file order."""
    path = Path(path)
    for row, record in enumerate(_records(path, skips)):
        text = _lookup(record, fields.text)
        if not isinstance(text, str) or not text.strip():
            skips["no_text"] += 1
            continue
        doc_id = _lookup(record, fields.id)
        url = _lookup(record, fields.url)
        created = _lookup(record, fields.created)
        metadata = dict(record["metadata"]) if isinstance(record.get("metadata"), dict) else {}
        metadata.update({"url": url, "source_file": path.name, "row": row})
        yield {"id": str(doc_id) if doc_id is not None else stable_hash(f"{path.name}/{row}"),
               "text": text, "source": source, "added": None,
               "created": str(created) if created is not None else None, "metadata": metadata}


def import_documents(path: str | Path, out_path: str | Path, source: str,
                     fields: DocumentFields | Mapping | None = None) -> dict:
    skips: Counter = Counter()
    kept = write_jsonl_gz(out_path, as_documents(path, source, DocumentFields.of(fields or {}),
                                                 skips))
    for reason, count in sorted(skips.items()):
        log.info("skipped %d record(s): %s", count, reason)
    return {"documents": kept, "skipped": dict(sorted(skips.items()))}


@command("import-documents", arg("--input"), OUT, arg("--report"), arg("--source"), CFG,
         job=lambda args: f"import/{Path(args.out).name}",
         params=lambda args: {"input": args.input, "source": args.source, **args.cfg},
         inputs=("input",), outputs=("out", "report"))
def import_documents_command(args, job) -> dict:
    """One file of a released corpus (Dolma/FineWeb/DCLM JSONL or parquet) as documents."""
    result = import_documents(args.input, args.out, args.source, args.cfg)
    write_json(args.report, result)
    return {"documents": result["documents"],
            **{f"skipped.{k}": v for k, v in result["skipped"].items()}}

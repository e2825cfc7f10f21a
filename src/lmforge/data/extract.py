"""WARC/WET → Dolma documents.

FastWARC reads the records (gzip per record or plain). HTML responses: Resiliparse decodes the
charset and extracts the main text. WET conversion records already hold Common Crawl's text.
A record that cannot become a document is skipped and counted by reason; a corrupt record is
stepped over (reading resumes at the next record) and its bytes are counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from lmforge.io.storage import stable_hash, write_json, write_jsonl_gz
from lmforge.runner import OUT, arg, command

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
# Where a record may start: a gzip member (one record per member) or a plain WARC header.
GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."


def _iso(date) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def iter_documents(warc_path: str | Path, source: str, skips: Counter) -> Iterator[dict]:
    warc_path = Path(warc_path)
    try:
        stream = open(warc_path, "rb")
    except OSError as err:
        raise FileNotFoundError(f"cannot open WARC {warc_path}: {err}") from None
    with stream:
        for record in _records(stream, warc_path, skips):
            doc = _to_document(record, warc_path, source, skips)
            if doc is not None:
                yield doc


def _records(stream, warc_path: Path, skips: Counter) -> Iterator:
    """The file's records; a corrupt one loses only itself. FastWARC cannot step over a bad
    gzip member or header, so on an error the file is searched, from past the last good
    record, for the next offset where a record parses, and reading resumes there; the bytes
    in between are counted (`corrupt_bytes`)."""
    magic = GZIP_MAGIC if stream.read(2) == GZIP_MAGIC[:2] else WARC_MAGIC
    start, last_good = 0, -1
    while start is not None:
        stream.seek(start)
        try:
            for record in ArchiveIterator(stream, parse_http=True, verify_digests=False):
                last_good = record.stream_pos
                yield record
            return
        except Exception as err:  # fastwarc raises on a corrupt gzip member or WARC header
            corrupt_at = _find(stream, magic, last_good + 1) if last_good >= 0 else start
            start = _next_record(stream, magic, (corrupt_at or 0) + 1)
            end = start if start is not None else stream.seek(0, 2)
            skips["corrupt_record"] += 1
            skips["corrupt_bytes"] += end - (corrupt_at if corrupt_at is not None else end)
            log.warning("%s: corrupt record at byte %s (%s); resuming at %s", warc_path,
                        corrupt_at, err, "end of file" if start is None else f"byte {start}")
            last_good = -1


def _find(stream, magic: bytes, offset: int, chunk: int = 1 << 20) -> int | None:
    """Offset of the next `magic` at or after `offset`, or None."""
    while True:
        stream.seek(offset)
        data = stream.read(chunk + len(magic) - 1)
        if len(data) < len(magic):
            return None
        found = data.find(magic)
        if found >= 0:
            return offset + found
        offset += chunk


def _next_record(stream, magic: bytes, offset: int) -> int | None:
    """The first offset at or after `offset` where a whole WARC record parses."""
    while (candidate := _find(stream, magic, offset)) is not None:
        stream.seek(candidate)
        try:
            record = next(ArchiveIterator(stream, parse_http=False, verify_digests=False))
            record.reader.read()
            return candidate
        except Exception:  # not a record start (or another corrupt one): search on
            offset = candidate + 1
    return None


def _read_payload(record, skips: Counter) -> bytes | None:
    try:
        body = record.reader.read()
    except Exception:  # a record cut short inside its payload
        skips["truncated_payload"] += 1
        return None
    if not body:
        skips["empty_payload"] += 1
        return None
    return body


def _html_text(record, skips: Counter) -> tuple[str, str] | None:
    """Main text of an HTTP response record holding HTML, and its content type."""
    if record.http_headers is None:
        skips["no_http_headers"] += 1
        return None
    status = record.http_headers.status_code
    if status != 200:
        skips[f"http_status:{status}"] += 1
        return None
    content_type = (record.http_headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type and content_type not in HTML_TYPES:
        skips["not_html"] += 1
        return None
    body = _read_payload(record, skips)
    if body is None:
        return None
    html = _decode_html(body, record.http_headers.get("Content-Type") or "")
    text = extract_plain_text(HTMLTree.parse(html), main_content=True, alt_texts=False,
                              links=False, list_bullets=True)
    return text, content_type or "text/html"


def _decode_html(body: bytes, content_type: str) -> str:
    """The charset the server declared if the bytes decode with it, else UTF-8 if they are
    valid UTF-8 (a strong signal: resiliparse's detector alone reads some UTF-8 pages as
    cp1252, turning ’ into â€™), else resiliparse's detection."""
    declared = content_type.partition("charset=")[2].split(";")[0].strip().strip('"\'')
    for encoding in (declared, "utf-8"):
        if encoding:
            try:
                return body.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                pass
    return bytes_to_str(body, detect_encoding(body))


def _wet_text(record, skips: Counter) -> tuple[str, str] | None:
    """A WET conversion record: Common Crawl already extracted the text (UTF-8)."""
    body = _read_payload(record, skips)
    if body is None:
        return None
    return bytes_to_str(body, "utf-8"), "text/plain"


def _to_document(record, warc_path: Path, source: str, skips: Counter) -> dict | None:
    if record.record_type == WarcRecordType.response:
        extracted = _html_text
    elif record.record_type == WarcRecordType.conversion:
        extracted = _wet_text
    else:
        skips[f"record_type:{record.record_type}"] += 1
        return None
    url = (record.headers.get("WARC-Target-URI") or "").strip().strip("<>")
    if not url:
        skips["no_target_uri"] += 1
        return None
    result = extracted(record, skips)
    if result is None:
        return None
    text, content_type = result[0].strip(), result[1]
    if not text:
        skips["no_text"] += 1
        return None
    record_id = record.headers.get("WARC-Record-ID", "")
    date = _iso(record.record_date) if record.record_date else None
    return {
        "id": stable_hash(f"{warc_path.name}/{record_id}/{url}"),
        "text": text,
        "source": source,
        "added": date,
        "created": date,
        "metadata": {
            "url": url,
            "warc_record_id": record_id,
            "warc_file": warc_path.name,
            "content_type": content_type,
            "length": len(text),
        },
    }


def extract(warc_path: str | Path, out_path: str | Path, source: str) -> dict:
    skips: Counter = Counter()
    kept = write_jsonl_gz(out_path, iter_documents(warc_path, source, skips))
    for reason, count in sorted(skips.items()):
        log.info("skipped %d record(s): %s", count, reason)
    return {"documents": kept, "skipped": dict(sorted(skips.items()))}


@command("extract", arg("--warc"), OUT, arg("--report"), arg("--source"),
         job=lambda args: f"extract/{Path(args.out).name}",
         params=lambda args: {"warc": args.warc, "source": args.source},
         inputs=("warc",), outputs=("out", "report"))
def extract_command(args, job) -> dict:
    """Documents of one WARC file, with the count of each kind of skipped record."""
    result = extract(args.warc, args.out, args.source)
    write_json(args.report, result)
    return {"documents": result["documents"],
            **{f"skipped.{k}": v for k, v in result["skipped"].items()}}

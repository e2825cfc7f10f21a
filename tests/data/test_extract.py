import gzip

import pytest

from lmforge.data.extract import extract
from lmforge.io.storage import read_jsonl


def test_demo_shard_extracts_documents_in_dolma_format(demo_crawl, tmp_path):
    result = extract(demo_crawl / "crawl" / "shard-0000.warc.gz", tmp_path / "d.jsonl.gz", "demo")
    docs = list(read_jsonl(tmp_path / "d.jsonl.gz"))
    assert result["documents"] == len(docs) > 400
    doc = docs[0]
    assert set(doc) == {"id", "text", "source", "added", "created", "metadata"}
    assert doc["metadata"]["url"].startswith("https://")
    assert "<p>" not in doc["text"] and "All rights reserved" not in doc["text"]  # boilerplate
    labels = [label for label in read_jsonl(demo_crawl / "crawl" / "labels.jsonl.gz")
              if label["shard"] == "shard-0000"]
    non_html = sum("non_html" in label["kinds"] for label in labels)
    assert result["skipped"].get("not_html", 0) == non_html
    assert result["documents"] + result["skipped"].get("not_html", 0) == len(labels)
    texts = "".join(d["text"] for d in docs)
    assert "’" in texts and "â€" not in texts  # declared UTF-8 is honoured, no mojibake


def test_declared_charset_then_utf8_then_detection():
    from lmforge.data.extract import _decode_html

    page = "<p>naïve café – it’s</p>"
    assert _decode_html(page.encode("utf-8"), "text/html") == page
    assert _decode_html(page.encode("cp1252"), "text/html; charset=windows-1252") == page
    assert _decode_html(page.encode("cp1252"), "text/html; charset=bogus") == page
    assert _decode_html(page.encode("utf-8"), 'text/html; charset="utf-8"') == page


def test_every_shared_warc_goes_through(shared_data, tmp_path):
    total = 0
    for warc in sorted((shared_data / "warc").iterdir()):
        result = extract(warc, tmp_path / "out.jsonl.gz", "cc")
        total += result["documents"]
        for doc in read_jsonl(tmp_path / "out.jsonl.gz"):
            assert doc["text"].strip()
    assert total >= 70  # 37 wget pages + 29 ClueWeb pages + single-page samples


def _record_offsets(path) -> list[int]:
    from fastwarc.warc import ArchiveIterator

    with open(path, "rb") as stream:
        return [record.stream_pos for record in ArchiveIterator(stream, parse_http=False)]


def test_corrupt_record_loses_only_itself(demo_crawl, tmp_path):
    warc = demo_crawl / "crawl" / "shard-0000.warc.gz"
    data, offsets = warc.read_bytes(), _record_offsets(warc)
    whole = extract(warc, tmp_path / "whole.jsonl.gz", "demo")
    start, end = offsets[200], offsets[201]
    broken = tmp_path / "broken" / warc.name  # document ids include the file's name
    broken.parent.mkdir()
    broken.write_bytes(data[: start + 20] + b"\x00" * 30 + data[start + 50 :])
    result = extract(broken, tmp_path / "out.jsonl.gz", "demo")
    assert result["skipped"]["corrupt_record"] == 1
    assert result["skipped"]["corrupt_bytes"] == end - start
    # Record 200 is a document or a skipped non-HTML page: one of the two counts drops by one.
    lost = (whole["documents"] - result["documents"]
            + whole["skipped"].get("not_html", 0) - result["skipped"].get("not_html", 0))
    assert lost == 1
    survivors = {d["id"] for d in read_jsonl(tmp_path / "out.jsonl.gz")}
    assert survivors <= {d["id"] for d in read_jsonl(tmp_path / "whole.jsonl.gz")}


def test_corrupt_tail_is_counted_not_fatal(demo_crawl, tmp_path):
    warc = demo_crawl / "crawl" / "shard-0000.warc.gz"
    data, cut = warc.read_bytes(), warc.stat().st_size // 2
    broken = tmp_path / "broken.warc.gz"
    broken.write_bytes(data[:cut] + b"\x00garbage" * 100)
    result = extract(broken, tmp_path / "out.jsonl.gz", "demo")
    assert 100 < result["documents"] < 500
    assert result["skipped"]["corrupt_record"] == 1
    cut_record = max(offset for offset in _record_offsets(warc) if offset < cut)
    assert result["skipped"]["corrupt_bytes"] == cut - cut_record + 800  # and the garbage


def test_corrupt_plain_warc_record_is_stepped_over(shared_data, tmp_path):
    warc = shared_data / "warc" / "warcio__example-iana.org-chunked.warc"
    data = warc.read_bytes()
    offsets = _record_offsets(warc)
    whole = extract(warc, tmp_path / "whole.jsonl.gz", "t")
    broken = tmp_path / "broken.warc"
    broken.write_bytes(data[: offsets[0]] + b"GARBAGE!" + data[offsets[0] + 8 :])
    result = extract(broken, tmp_path / "out.jsonl.gz", "t")
    assert result["skipped"]["corrupt_record"] == 1
    assert result["documents"] <= whole["documents"]


def test_missing_warc_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot open WARC"):
        extract(tmp_path / "nope.warc.gz", tmp_path / "out.jsonl.gz", "demo")


def test_non_utf8_page_is_decoded(tmp_path):
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    html = "<html><body><p>Größe und Übermaß, ça va très bien: élève naïve.</p></body></html>"
    path = tmp_path / "latin1.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=iso-8859-1")],
                                   protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(
            "http://example.com/", "response", payload=io.BytesIO(html.encode("latin-1")),
            http_headers=headers))
    extract(path, tmp_path / "out.jsonl.gz", "t")
    (doc,) = read_jsonl(tmp_path / "out.jsonl.gz")
    assert "Größe" in doc["text"] and "élève" in doc["text"]
    assert gzip.open(tmp_path / "out.jsonl.gz").read()


def test_wet_conversion_records_become_documents(tmp_path):
    import io

    from warcio.warcwriter import WARCWriter

    path = tmp_path / "sample.warc.wet.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        writer.write_record(writer.create_warcinfo_record("sample.warc.wet.gz", {"a": "b"}))
        for i, text in enumerate(["First page text.\nSecond line.", ""]):
            writer.write_record(writer.create_warc_record(
                f"http://example.com/{i}", "conversion", payload=io.BytesIO(text.encode()),
                warc_content_type="text/plain"))
    result = extract(path, tmp_path / "out.jsonl.gz", "cc")
    (doc,) = read_jsonl(tmp_path / "out.jsonl.gz")
    assert doc["text"] == "First page text.\nSecond line."
    assert doc["metadata"]["content_type"] == "text/plain"
    assert result["skipped"] == {"empty_payload": 1, "record_type:warcinfo": 1}

"""What a crawl reads: WARC inputs, and released corpora as documents."""

import gzip

import pytest

from lmforge.data.warc_inputs import warc_inputs
from lmforge.io.storage import InputError


def test_warc_inputs_from_globs_urls_and_a_common_crawl_manifest(tmp_path):
    for name in ("b.warc.gz", "a.warc.gz"):
        (tmp_path / name).write_bytes(b"")
    manifest = tmp_path / "warc.paths.gz"
    with gzip.open(manifest, "wt") as f:
        f.write("crawl-data/X/warc/1.warc.gz\n\ncrawl-data/X/warc/2.warc.gz\n")
    got = warc_inputs([str(tmp_path / "*.warc.gz"), "s3://bucket/c.warc.gz"], str(manifest),
                      "https://data.example.org/")
    assert got == [str(tmp_path / "a.warc.gz"), str(tmp_path / "b.warc.gz"),
                   "s3://bucket/c.warc.gz", "https://data.example.org/crawl-data/X/warc/1.warc.gz",
                   "https://data.example.org/crawl-data/X/warc/2.warc.gz"]
    assert len(warc_inputs([], str(manifest), "https://h/", limit=1)) == 1
    (tmp_path / "broken.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="cannot read the WARC manifest"):
        warc_inputs([], str(tmp_path / "broken.gz"))
    with pytest.raises(InputError, match="matches no file"):
        warc_inputs([str(tmp_path / "*.warc"), str(tmp_path / "a.warc.gz")])


def _dolma_docs(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"dolma-{i}", "text": f"Dolma document number {i}.", "source": "cc",
             "added": "2024-01-01", "created": "2023-05-01",
             "metadata": {"url": f"https://dolma.example/{i}", "language": "en"}}
            for i in range(start, start + n)]


def _write_zst(path, lines: list[bytes]) -> None:
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))


def test_released_corpora_become_documents_in_file_order(tmp_path):
    """Dolma JSONL (.zst and .gz), FineWeb parquet and plain JSONL, with their own fields."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.data.documents import import_documents
    from lmforge.io.storage import read_jsonl

    lines = [json.dumps(d).encode() + b"\n" for d in _dolma_docs(3)]
    _write_zst(tmp_path / "dolma.jsonl.zst", lines)
    with gzip.open(tmp_path / "dolma.json.gz", "wb") as f:
        f.writelines(lines)
    pq.write_table(pa.table({"text": ["FineWeb text one.", "FineWeb text two.", ""],
                             "id": ["<urn:uuid:1>", "<urn:uuid:2>", "<urn:uuid:3>"],
                             "url": ["https://fw.example/a", "https://fw.example/b", "x"],
                             "date": ["2024-02-01T00:00:00Z"] * 3,
                             "dump": ["CC-MAIN-2024-10"] * 3}), tmp_path / "fineweb.parquet")
    # DCLM-style: no id, the text under another name.
    (tmp_path / "dclm.jsonl").write_text(
        '{"body": "DCLM page.", "url": "https://dclm.example/"}\n')
    for name in ("dolma.jsonl.zst", "dolma.json.gz"):
        result = import_documents(tmp_path / name, tmp_path / f"{name}.out.gz", "released")
        docs = list(read_jsonl(tmp_path / f"{name}.out.gz"))
        assert result == {"documents": 3, "skipped": {}}
        assert [d["id"] for d in docs] == ["dolma-0", "dolma-1", "dolma-2"]
        assert docs[1]["metadata"]["url"] == "https://dolma.example/1"
        assert docs[1]["metadata"]["language"] == "en" and docs[1]["source"] == "released"
        assert docs[1]["created"] == "2023-05-01"
    result = import_documents(tmp_path / "fineweb.parquet", tmp_path / "fw.gz", "released")
    docs = list(read_jsonl(tmp_path / "fw.gz"))
    assert result == {"documents": 2, "skipped": {"no_text": 1}}
    assert [(d["id"], d["metadata"]["url"], d["created"]) for d in docs] == [
        ("<urn:uuid:1>", "https://fw.example/a", "2024-02-01T00:00:00Z"),
        ("<urn:uuid:2>", "https://fw.example/b", "2024-02-01T00:00:00Z")]
    import_documents(tmp_path / "dclm.jsonl", tmp_path / "dclm.gz", "released", {"text": "body"})
    (doc,) = read_jsonl(tmp_path / "dclm.gz")
    assert doc["text"] == "DCLM page." and len(doc["id"]) == 32  # hash of file and row
    with pytest.raises(InputError, match=r"unknown key\(s\) \['txt'\]"):
        import_documents(tmp_path / "dclm.jsonl", tmp_path / "x.gz", "r", {"txt": "body"})
    with pytest.raises(InputError, match="not a documents file"):
        import_documents(tmp_path / "dclm.gz.tar", tmp_path / "x.gz", "r")


def test_bad_records_are_counted_and_a_broken_download_is_an_error(tmp_path):
    from lmforge.data.documents import import_documents
    from lmforge.io.storage import read_jsonl

    good = b'{"id": "a", "text": "fine"}\n'
    lines = [good, b'{"id": "b", "text": \n', b'\xff\xfe{"id": "c"}\n', b'[1, 2]\n',
             b'{"id": "d", "text": 7}\n', b"\n", b'{"id": "e", "text": "also fine"}\n']
    _write_zst(tmp_path / "bad.jsonl.zst", lines)
    result = import_documents(tmp_path / "bad.jsonl.zst", tmp_path / "out.gz", "r")
    assert result == {"documents": 2, "skipped": {"malformed_json": 1, "no_text": 1,
                                                  "not_an_object": 1, "not_utf8": 1}}
    assert [d["id"] for d in read_jsonl(tmp_path / "out.gz")] == ["a", "e"]
    whole = gzip.compress(good * 5000)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cut.jsonl.gz: cannot be read past line"):
        import_documents(tmp_path / "cut.jsonl.gz", tmp_path / "cut.out.gz", "r")
    assert not (tmp_path / "cut.out.gz").exists()  # nothing that looks complete
    (tmp_path / "cut.jsonl.zst").write_bytes((tmp_path / "bad.jsonl.zst").read_bytes()[:-9])
    with pytest.raises(InputError, match="cannot be read past line"):
        import_documents(tmp_path / "cut.jsonl.zst", tmp_path / "cut.out.gz", "r")
    corrupt = bytearray((tmp_path / "bad.jsonl.zst").read_bytes())
    corrupt[8:20] = b"\x00" * 12
    (tmp_path / "corrupt.jsonl.zst").write_bytes(bytes(corrupt))
    with pytest.raises(InputError, match="cannot be read past line"):
        import_documents(tmp_path / "corrupt.jsonl.zst", tmp_path / "cut.out.gz", "r")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="cannot read the parquet file"):
        import_documents(tmp_path / "cut.parquet", tmp_path / "cut.out.gz", "r")


@pytest.mark.workflow
def test_workflow_starts_from_a_released_corpus_over_http_and_on_disk(tmp_path):
    """`crawl.source: documents`: a Dolma .jsonl.zst served over HTTP and a FineWeb-style
    parquet file become the documents shards; dedup then works across them."""
    import functools
    import http.server
    import json
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from lmforge.io.storage import read_jsonl
    from workflow_helpers import ROOT, snakemake

    site = tmp_path / "site"
    site.mkdir()
    _write_zst(site / "dolma.jsonl.zst",
               [json.dumps(d).encode() + b"\n" for d in _dolma_docs(20)])
    # The parquet repeats one Dolma URL (a URL duplicate across the two files).
    pq.write_table(pa.table({"text": [f"FineWeb text {i}." for i in range(10)],
                             "id": [f"fw-{i}" for i in range(10)],
                             "url": ["https://dolma.example/3"] + [f"https://fw.example/{i}"
                                                                  for i in range(1, 10)]}),
                   tmp_path / "fineweb.parquet")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dolma.jsonl.zst"
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["crawl"].update(source="documents", name="released",
                           document_paths=[url, str(tmp_path / "*.parquet")])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    target = "results/attributes/dedup_url/released/shard-0001.jsonl.gz"
    try:
        proc = snakemake(ROOT, work, target, "--configfile", str(tmp_path / "config.yaml"))
    finally:
        server.shutdown()
    assert f"Retrieving from storage: {url}" in proc.stdout + proc.stderr
    # Shards follow the sorted inputs: the local parquet (shard 0), then the URL.
    docs = list(read_jsonl(work / "results/documents/released/shard-0001.jsonl.gz"))
    assert [d["id"] for d in docs] == [f"dolma-{i}" for i in range(20)]
    flags = [bool(r["attributes"]) for r in read_jsonl(work / target)]
    assert flags == [i == 3 for i in range(20)]  # its URL came first in the parquet file
    report = json.loads((work / "results/documents/released/shard-0000.import.json").read_text())
    assert report == {"documents": 10, "skipped": {}}
    config["crawl"]["document_paths"] = [str(tmp_path / "no-such-dir" / "*.parquet")]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(ROOT, tmp_path / "typo", target, "-n", "--configfile",
                     str(tmp_path / "config.yaml"), check=False)
    assert proc.returncode != 0
    assert "no-such-dir/*.parquet' matches no file" in proc.stdout + proc.stderr


def test_plan_data_scales_the_measured_costs(tmp_path, capsys):
    """Per-shard memory grows with a shard's documents, a bucket job's is capped by DuckDB's
    limit, CPU with the documents; wall time is whole waves of jobs."""
    import json

    from lmforge.cli import main as cli
    from lmforge.data.plan import STEP_SCOPE, plan_data

    def jobs(n, cpu, rss):
        return [{"cpu": cpu, "rss_mb": rss, "wall": cpu, "out": {}} for _ in range(n)]

    scope_jobs = {"shard": 4, "bucket": 4, "corpus": 1}
    measured = {"100": {"corpus": {"documents": 40_000, "shards": 4, "near_duplicates": 400},
                        "jobs": {step: jobs(scope_jobs[scope], 10.0, 420.0)
                                 for step, scope in STEP_SCOPE.items()}}}
    rows = {r["step"]: r for r in plan_data(measured, documents=1_000_000, shards=100,
                                            partitions=10, cores=50, memory_limit="1GB")}
    # 10,000 documents per shard as in the bench: the same memory; CPU ×25 (40 s → 1000 s).
    assert rows["dedup_keys"]["memory_mb"] == pytest.approx(420)
    assert rows["dedup_keys"]["cpu_hours"] == pytest.approx(40 * 25 / 3600)
    assert rows["dedup_keys"]["wall_hours"] == pytest.approx(2 * 1000 / 100 / 3600)
    # A bucket of 100,000 documents: 10× the bench's, capped at 1 GB × 1.25 + 1 GB.
    assert rows["dedup_bucket"]["memory_mb"] == 2250
    assert rows["minhash_clusters"]["jobs"] == 1
    # 10,000 near duplicates (1%), each a pair, two 100-value signatures, union-find arrays.
    assert rows["minhash_clusters"]["memory_mb"] == pytest.approx(120 + 10_000 * 1640 / 1e6)
    # 1e9 of them: DuckDB's cap, as the bucket jobs.
    many = plan_data(measured, documents=100_000_000_000, shards=100, partitions=10, cores=50,
                     memory_limit="1GB")
    assert {r["step"]: r for r in many}["minhash_clusters"]["memory_mb"] == 2250
    (tmp_path / "scale.json").write_text(json.dumps(measured))
    assert cli(["plan-data", "--measured", str(tmp_path / "scale.json"), "--warc-files", "90000",
                "--cores", "512"]) == 0
    out = capsys.readouterr().out
    assert "2,970,000,000 documents in 90,000 shards" in out and "| dedup_bucket |" in out
    assert cli(["plan-data", "--measured", str(tmp_path / "scale.json")]) == 2

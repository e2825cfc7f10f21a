"""The data half on a crawl like real small ones: a WARC file with no record, one with a
single PII-free page, and a demo shard. Every stage runs through the empty shard, the empty
mix shard and the all-zero PII columns, to statistics and token files."""

import io
import json

import pytest
import yaml

from lmforge.data.tokenize import open_tokens
from lmforge.io.storage import read_jsonl
from workflow_helpers import snakemake

pytestmark = pytest.mark.workflow

PAGE = ("<html><body><p>" + " ".join(
    "The garden path winds between old stone walls and quiet beds of herbs." for _ in range(12))
    + "</p><p>Visitors walk slowly and read the small painted signs.</p></body></html>")


def _one_page_warc(path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                   protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(
            "https://garden.example/path", "response", payload=io.BytesIO(PAGE.encode()),
            http_headers=headers))


def test_data_half_runs_through_empty_and_one_document_shards(repo, demo_crawl, tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "a-empty.warc.gz").write_bytes(b"")
    _one_page_warc(crawl / "b-one.warc.gz")
    (crawl / "c-demo.warc.gz").write_bytes((demo_crawl / "crawl" / "shard-0000.warc.gz")
                                           .read_bytes())
    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["crawl"].update(source="warc", name="cc", warc_paths=[str(crawl / "*.warc.gz")])
    config["curate"]["dedup"]["partitions"] = 2
    # Two taggers stand for all (one tagging runner; fewer jobs in CI): the mix's rules on the
    # others' attributes then never match.
    config["curate"]["taggers"] = ["lang", "pii"]
    config["stats"]["overlap"] = []
    (tmp_path / "awkward.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    targets = ["results/mixes/web/funnel.json", "results/stats/mix-web/summary.json",
               "results/tokens/web/meta.json"]
    snakemake(repo, work, *targets, "--configfile", str(tmp_path / "awkward.yaml"))
    results = work / "results"
    counts = [len(list(read_jsonl(results / f"documents/cc/shard-000{i}.jsonl.gz")))
              for i in range(3)]
    assert counts[0] == 0 and counts[1] == 1 and counts[2] > 400
    mixed = json.loads((results / "stats/mix-web/summary.json").read_text())
    assert mixed["pii_email"] == 0  # masked in the mix; the one-page shard had none
    funnel = json.loads((results / "mixes/web/funnel.json").read_text())
    assert funnel["documents_in"] == sum(counts)
    assert 0 < mixed["documents"] == funnel["documents_out"] < sum(counts)
    meta = json.loads((results / "tokens/web/meta.json").read_text())
    assert len(meta["splits"]["train"]["files"]) == 3
    assert meta["splits"]["train"]["files"][0]["tokens"] == 0  # the empty shard's file
    assert len(open_tokens(results / "tokens/web", "train")) == meta["splits"]["train"]["tokens"]

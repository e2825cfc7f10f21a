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

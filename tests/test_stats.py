import pandas as pd

from lmforge.stats import corpus_stats
from lmforge.storage import write_jsonl_gz

from conftest import make_docs


def test_duckdb_stats_are_exact(tmp_path, config):
    texts = ["alpha beta", "alpha beta", "gamma", "delta epsilon zeta", "alpha beta", "gamma"]
    urls = ["https://a.org/1", "https://a.org/2", "https://b.org/1", "https://a.org/1",
            "https://c.org/x", "https://b.org/2"]
    docs = make_docs(texts, urls)
    write_jsonl_gz(tmp_path / "s0.jsonl.gz", docs[:3])
    write_jsonl_gz(tmp_path / "s1.jsonl.gz", docs[3:])
    cfg = {**config["stats"], "duckdb": {**config["stats"]["duckdb"],
                                         "temp_directory": str(tmp_path / "duck")}}
    summary = corpus_stats([tmp_path / "s0.jsonl.gz", tmp_path / "s1.jsonl.gz"],
                           tmp_path / "out", cfg)
    assert summary["documents"] == 6
    assert summary["whitespace_tokens"] == 2 + 2 + 1 + 3 + 2 + 1
    assert summary["characters"] == sum(map(len, texts))
    assert summary["duplicate_text_clusters"] == 2  # "alpha beta" ×3, "gamma" ×2
    assert summary["documents_in_duplicate_text_clusters"] == 5
    assert summary["duplicate_url_clusters"] == 1
    domains = pd.read_parquet(tmp_path / "out" / "domains.parquet")
    counts = dict(zip(domains["domain"], domains["documents"]))
    assert counts == {"a.org": 3, "b.org": 2, "c.org": 1}
    for name in ("summary.md", "length_histogram.png", "domains.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_empty_shards_give_zero_counts(tmp_path, config):
    write_jsonl_gz(tmp_path / "empty.jsonl.gz", [])
    cfg = {**config["stats"], "duckdb": {**config["stats"]["duckdb"],
                                         "temp_directory": str(tmp_path / "duck")}}
    summary = corpus_stats([tmp_path / "empty.jsonl.gz"], tmp_path / "out", cfg)
    assert summary["documents"] == summary["characters"] == summary["whitespace_tokens"] == 0
    assert (tmp_path / "out" / "length_histogram.png").exists()

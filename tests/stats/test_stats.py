import json

import pandas as pd
import pytest

from lmforge.cli import main as cli
from lmforge.eval import generated as tasks
from lmforge.io.storage import write_jsonl_gz
from lmforge.stats.analyses import corpus_stats
from lmforge.stats.overlap import corpus_overlap
from lmforge.stats.search import search

from conftest import generated_task_specs, make_docs

TEXTS = ["alpha beta", "alpha beta", "gamma", "delta epsilon zeta", "alpha beta", "gamma"]
URLS = ["https://a.org/1", "https://a.org/2", "http://b.org/1", "https://a.org/1",
        "https://c.net/x", "https://b.org/2"]


@pytest.fixture
def stats_cfg(config, tmp_path):
    return {**config["stats"], "duckdb": {**config["stats"]["duckdb"],
                                          "temp_directory": str(tmp_path / "duck")}}


def _shards(tmp_path, docs, name="s"):
    write_jsonl_gz(tmp_path / f"{name}0.jsonl.gz", docs[:3])
    write_jsonl_gz(tmp_path / f"{name}1.jsonl.gz", docs[3:])
    return [tmp_path / f"{name}0.jsonl.gz", tmp_path / f"{name}1.jsonl.gz"]


def test_duckdb_stats_are_exact(tmp_path, stats_cfg):
    docs = make_docs(TEXTS, URLS)
    docs[0]["created"] = "2024-03-01T10:00:00.000Z"
    summary = corpus_stats(_shards(tmp_path, docs), tmp_path / "out", stats_cfg)
    assert summary["documents"] == 6
    assert summary["whitespace_tokens"] == 2 + 2 + 1 + 3 + 2 + 1
    assert summary["characters"] == sum(map(len, TEXTS))
    assert summary["tokenizer_tokens"] is None  # no tokenizer given
    assert summary["duplicate_text_clusters"] == 2  # "alpha beta" ×3, "gamma" ×2
    assert summary["documents_in_duplicate_text_clusters"] == 5
    assert summary["duplicate_url_clusters"] == 1
    out = tmp_path / "out"
    counts = pd.read_parquet(out / "domains.parquet").set_index("domain")["documents"]
    assert counts.to_dict() == {"a.org": 3, "b.org": 2, "c.net": 1}
    assert pd.read_parquet(out / "schemes.parquet").set_index("scheme")["documents"].to_dict() \
        == {"https": 5, "http": 1}
    assert pd.read_parquet(out / "suffixes.parquet").set_index("suffix")["documents"].to_dict() \
        == {"org": 5, "net": 1}
    dates = pd.read_parquet(out / "dates.parquet")
    assert dates.dropna()["created_day"].tolist() == ["2024-03-01"]
    sizes = pd.read_parquet(out / "duplicate_cluster_sizes.parquet")
    assert sorted(zip(sizes["key"], sizes["cluster_size"], sizes["clusters"])) == [
        ("text", 2, 1), ("text", 3, 1), ("url", 2, 1)]
    grams = pd.read_parquet(out / "ngrams.parquet")
    most = grams[(grams["rank_kind"] == "most") & (grams["n"] == 1)]
    assert most.iloc[0].tolist()[2:] == ["alpha", 3] and most.iloc[1].tolist()[2:] == ["beta", 3]
    least2 = grams[(grams["rank_kind"] == "least") & (grams["n"] == 2)]
    assert least2.iloc[0].tolist()[2:] == ["delta epsilon", 1]
    assert set(grams[grams["n"] == 3]["ngram"]) == {"delta epsilon zeta"}
    for name in ("summary.md", "summary.json", "length_histogram.png", "domains.png",
                 "ngrams.png", "languages.png", "dates.png"):
        assert (out / name).stat().st_size > 0


def test_pii_toxic_contamination_languages_and_tokens(tmp_path, stats_cfg, config):
    tasks.make_tasks(tmp_path / "tasks", config["tasks"])
    cloze = tasks.load_task(tmp_path / "tasks" / "cloze_mc.jsonl.gz")
    arith = tasks.load_task(tmp_path / "tasks" / "arith_gen.jsonl.gz")
    texts = [
        "Write to ann@example.org or bob@example.com, or call 555-123-4567.",
        "Some text. " + tasks.item_text("cloze_mc", cloze[0]) + " More text.",
        # The item's words reordered: shares a 13-gram but is not the item verbatim.
        tasks.item_text("cloze_mc", cloze[1]) + " " + tasks.item_text("cloze_mc", cloze[1])[:5],
        "Quiz. " + tasks.item_text("arith_gen", arith[3]),
        "The author is a stupid idiot. The rest of this page is fine.",
        "Nothing to see here, from 192.0.2.1.",
    ]
    texts[2] = " ".join(texts[2].split()[1:])  # drop the first word: n-gram hit, not exact
    docs = make_docs(texts)
    write_jsonl_gz(tmp_path / "lang.jsonl.gz", [
        {"id": d["id"], "attributes": {"lang__de" if i == 5 else "lang__en": [[0, 1, 1.0]]}}
        for i, d in enumerate(docs)])
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tok.json"))
    summary = corpus_stats(_shards(tmp_path, docs), tmp_path / "out", stats_cfg,
                           tokenizer=str(tmp_path / "tok.json"),
                           tasks=generated_task_specs(tmp_path / "tasks", config),
                           lang_paths=[tmp_path / "lang.jsonl.gz"])
    assert (summary["pii_email"], summary["pii_phone"], summary["pii_ip"]) == (2, 1, 1)
    assert summary["toxic_sentences"] == 1
    assert summary["tokenizer_tokens"] == sum(
        len(Tokenizer.from_file(str(tmp_path / "tok.json")).encode(t).ids) for t in texts)
    contamination = pd.read_parquet(tmp_path / "out" / "contamination.parquet").set_index("task")
    assert contamination.loc["cloze_mc", "contaminated_ngram"] == 2
    assert contamination.loc["cloze_mc", "contaminated_exact"] == 1
    assert contamination.loc["arith_gen", "contaminated_exact"] == 1
    assert contamination.loc["cloze_mc", "items"] == len(cloze)
    # The cloze sentences come from the reference's held-out topics: the two pages holding
    # cloze items share n-grams with two reference documents, holding neither whole.
    assert contamination.loc["reference_bpb", "contaminated_ngram"] == 2
    assert contamination.loc["reference_bpb", "contaminated_exact"] == 0
    langs = pd.read_parquet(tmp_path / "out" / "languages.parquet").set_index("language")
    assert langs["documents"].to_dict() == {"en": 5, "de": 1}


def test_approximate_ngrams_and_empty_shards(tmp_path, stats_cfg):
    cfg = {**stats_cfg, "ngrams": {**stats_cfg["ngrams"], "method": "approximate"}}
    summary = corpus_stats(_shards(tmp_path, make_docs(TEXTS, URLS)), tmp_path / "out", cfg)
    grams = pd.read_parquet(tmp_path / "out" / "ngrams.parquet")
    assert grams[grams["n"] == 1]["ngram"].tolist()[:2] == ["alpha", "beta"]
    assert summary["documents"] == 6
    write_jsonl_gz(tmp_path / "empty.jsonl.gz", [])
    summary = corpus_stats([tmp_path / "empty.jsonl.gz"], tmp_path / "empty", stats_cfg)
    assert summary["documents"] == summary["characters"] == summary["whitespace_tokens"] == 0
    assert (tmp_path / "empty" / "length_histogram.png").exists()
    # An empty shard beside shards with PII: every measured column keeps its type.
    pii = make_docs(["mail ann@example.org now", "call 555-123-4567 today"])
    write_jsonl_gz(tmp_path / "pii.jsonl.gz", pii)
    summary = corpus_stats([tmp_path / "empty.jsonl.gz", tmp_path / "pii.jsonl.gz"],
                           tmp_path / "mixed", stats_cfg)
    assert (summary["documents"], summary["pii_email"], summary["pii_phone"]) == (2, 1, 1)


def test_search_and_overlap(tmp_path, stats_cfg, capsys):
    paths = _shards(tmp_path, make_docs(TEXTS, URLS))
    result = search(paths, stats_cfg, phrase="alpha beta")
    assert result["documents"] == 3 and result["ids"] == ["d0", "d1", "d4"]
    assert search(paths, stats_cfg, regex=r"^(gamma|delta)\b")["documents"] == 3
    with pytest.raises(ValueError, match="regular expression"):
        search(paths, stats_cfg, regex="(")
    assert cli(["search", "--docs", *map(str, paths), "--phrase", "zeta"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == ["d3"]
    other = _shards(tmp_path, make_docs(["alpha beta", "new", "newer", "x", "y", "z"]), "o")
    result = corpus_overlap(paths, other, tmp_path / "overlap", stats_cfg)
    assert result["a_texts_in_other"] == 3 and result["b_texts_in_other"] == 1
    assert (tmp_path / "overlap" / "overlap.md").read_text().count("|") > 10

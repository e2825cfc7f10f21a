import gzip
import json

import numpy as np
import pytest

from lmforge.data.decontam import decontaminate
from lmforge.data.dedup import (
    dedup,
    dedup_minhash,
    dedup_paragraphs,
    minhash_signatures,
    paragraph_spans,
)
from lmforge.data.mix import mix_shard
from lmforge.eval.generated import make_tasks
from lmforge.io.storage import read_jsonl, write_jsonl_gz

from conftest import make_docs

BLOOM = {"expected_paragraphs": 10_000, "false_positive_rate": 1e-6}
MINHASH = {"ngram": 5, "bands": 20, "rows": 5, "seed": 1, "min_jaccard": 0.5}


def _dolma(shared_data, name):
    return [json.loads(line) for line in gzip.open(shared_data / "dolma" / name)]


def test_paragraph_dedup_matches_dolma_expected_output(shared_data, tmp_path):
    docs = _dolma(shared_data, "provided__documents__000.json.gz")
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    dedup_paragraphs([tmp_path / "docs.jsonl.gz"], [tmp_path / "para.jsonl.gz"], BLOOM)
    ours = [row["attributes"].get("dedup_para__paragraph", []) for row in
            read_jsonl(tmp_path / "para.jsonl.gz")]
    expected = [row["attributes"]["bff_duplicate_paragraph_spans"] for row in
                _dolma(shared_data, "expected__dedupe-paragraphs.json.gz")]
    assert sum(map(len, expected)) > 0
    assert ours == expected


def test_url_dedup_matches_dolma_expected_decisions(shared_data, tmp_path):
    docs = _dolma(shared_data, "provided__documents__000.json.gz")
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    dedup("dedup_url", [tmp_path / "docs.jsonl.gz"], [tmp_path / "url.jsonl.gz"])
    ours = [bool(row["attributes"]) for row in read_jsonl(tmp_path / "url.jsonl.gz")]
    expected = [bool(row["attributes"]) for row in
                _dolma(shared_data, "expected__dedupe-by-url.json.gz")]
    assert any(expected) and ours == expected


def test_paragraph_spans_cover_the_text_like_dolma():
    text = "a\nbb\n\nccc"
    spans = list(paragraph_spans(text))
    assert spans == [(0, 2, "a"), (2, 5, "bb"), (5, 6, ""), (6, 10, "ccc")]


def test_bloom_memory_is_set_by_config_not_corpus(tmp_path):
    small = make_docs([f"line {i}\nshared footer" for i in range(10)])
    large = make_docs([f"line {i}\nshared footer" for i in range(2000)])
    sizes = []
    for name, docs in (("small", small), ("large", large)):
        write_jsonl_gz(tmp_path / f"{name}.jsonl.gz", docs)
        stats = dedup_paragraphs([tmp_path / f"{name}.jsonl.gz"], [tmp_path / f"{name}.out.gz"],
                                 BLOOM)
        sizes.append(stats["bloom_bits"])
        assert stats["duplicate_paragraphs"] == len(docs) - 1  # the footer after its first time
    assert sizes[0] == sizes[1]
    bigger = dedup_paragraphs([tmp_path / "small.jsonl.gz"], [tmp_path / "x.gz"],
                              {**BLOOM, "expected_paragraphs": 100_000})["bloom_bits"]
    assert bigger > sizes[0]


def test_minhash_finds_near_duplicates_across_shards_and_keeps_the_first(tmp_path):
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    base = [" ".join(rng.choice(vocab, 120)) for _ in range(6)]
    edited = base[2].split()
    edited[60] = "changed"
    shard_a = make_docs(base[:4])
    shard_b = make_docs([" ".join(edited), base[4], base[5]])
    for doc in shard_b:
        doc["id"] = "b-" + doc["id"]
    paths, sigs, outs = [], [], []
    for name, docs in (("a", shard_a), ("b", shard_b)):
        write_jsonl_gz(tmp_path / f"{name}.jsonl.gz", docs)
        minhash_signatures(tmp_path / f"{name}.jsonl.gz", tmp_path / f"{name}.npz", MINHASH)
        paths.append(tmp_path / f"{name}.jsonl.gz")
        sigs.append(tmp_path / f"{name}.npz")
        outs.append(tmp_path / f"{name}.attrs.gz")
    stats = dedup_minhash(sigs, paths, outs, MINHASH)
    flags = [bool(r["attributes"]) for out in outs for r in read_jsonl(out)]
    assert flags == [False, False, False, False, True, False, False]
    assert stats["duplicates"] == 1
    # min_jaccard 0 is datatrove's rule (a shared band decides): documents sharing no band
    # with an earlier one stay unique.
    assert dedup_minhash(sigs, paths, outs, {**MINHASH, "min_jaccard": 0.0})["duplicates"] == 1
    again = tmp_path / "again.npz"
    minhash_signatures(paths[0], again, MINHASH)
    assert np.array_equal(np.load(again)["signatures"], np.load(sigs[0])["signatures"])


def test_minhash_refuses_stale_signatures(tmp_path):
    write_jsonl_gz(tmp_path / "a.jsonl.gz", make_docs(["one two three four five six"] * 2))
    minhash_signatures(tmp_path / "a.jsonl.gz", tmp_path / "a.npz", MINHASH)
    write_jsonl_gz(tmp_path / "a.jsonl.gz", [{"id": "z", "text": "the shard was rewritten"}])
    with pytest.raises(ValueError, match="stale"):
        dedup_minhash([tmp_path / "a.npz"], [tmp_path / "a.jsonl.gz"], [tmp_path / "o.gz"],
                      MINHASH)


def test_decontamination_flags_task_items_only(tmp_path, config):
    make_tasks(tmp_path / "tasks", config["tasks"])
    cloze = next(read_jsonl(tmp_path / "tasks" / "cloze_mc.jsonl.gz"))
    arith = next(read_jsonl(tmp_path / "tasks" / "arith_gen.jsonl.gz"))
    item = f"{cloze['context']} {cloze['choices'][cloze['gold']]}"
    docs = make_docs([
        "An unrelated page about gardens.\n" + item.upper() + "\nMore text.",
        f"Quiz time.\nQuestion: {arith['question']} Answer: {arith['answer']}\nBye.",
        "Question: What is 1000 + 1000? Answer: 2000",
        "Nothing to see here at all, just a long and ordinary paragraph of prose.",
    ])
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    stats = decontaminate(tmp_path / "docs.jsonl.gz", tmp_path / "tasks",
                          tmp_path / "out.jsonl.gz", config["curate"]["decontam"])
    rows = list(read_jsonl(tmp_path / "out.jsonl.gz"))
    assert [bool(r["attributes"]) for r in rows] == [True, True, False, False]
    (start, end, score), = rows[0]["attributes"]["decontam__overlap"]
    assert docs[0]["text"][start:end].strip() == item.upper() and score == 1.0
    assert stats["contaminated_documents"] == 2


def test_mixer_removes_duplicate_paragraph_spans(tmp_path, config):
    docs = make_docs(["keep this line\nfooter\n", "footer\n"])
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    write_jsonl_gz(tmp_path / "para.jsonl.gz", [
        {"id": "d0", "attributes": {"dedup_para__paragraph": [[15, 22, 1]]}},
        {"id": "d1", "attributes": {"dedup_para__paragraph": [[0, 7, 1]]}}])
    cfg = {"exclude": [], "remove_spans": ["dedup_para__paragraph"], "mask_pii": False,
           "max_shard_bytes": 10**6}
    funnel = mix_shard(tmp_path / "docs.jsonl.gz", [tmp_path / "para.jsonl.gz"],
                       tmp_path / "out", tmp_path / "f.json", cfg)
    out = list(read_jsonl(tmp_path / "out" / "part-00000.jsonl.gz"))
    assert [d["text"] for d in out] == ["keep this line\n"]
    assert funnel["dropped_documents:empty_after_span_removal"] == 1
    assert funnel["spans_removed"] == 2


def test_paragraph_ngram_overlap_mode(tmp_path):
    words = " ".join(f"w{i}" for i in range(40))
    edited = words.replace("w30", "changed")  # 8 of the 28 8-grams change
    docs = make_docs([words, edited, "short one", "short one"])
    write_jsonl_gz(tmp_path / "d.jsonl.gz", docs)
    cfg = {**BLOOM, "by_ngram": {"ngram_length": 8, "stride": 1, "overlap_threshold": 0.5,
                                 "skip_short_paragraphs": False}}
    dedup_paragraphs([tmp_path / "d.jsonl.gz"], [tmp_path / "o.jsonl.gz"], cfg)
    rows = [r["attributes"].get("dedup_para__paragraph")
            for r in read_jsonl(tmp_path / "o.jsonl.gz")]
    assert rows[0] is None and rows[2] is None
    (start, end, score), = rows[1]
    assert (start, end) == (0, len(edited) + 1) and score == round(25 / 33, 4)
    assert rows[3] == [[0, 10, 1.0]]
    cfg["by_ngram"]["skip_short_paragraphs"] = True
    dedup_paragraphs([tmp_path / "d.jsonl.gz"], [tmp_path / "o.jsonl.gz"], cfg)
    assert [r["attributes"] for r in read_jsonl(tmp_path / "o.jsonl.gz")][3] == {}

import gzip
import json

import numpy as np
import pytest

from lmforge.data.decontam import decontaminate
from lmforge.data.dedup import METHODS, deduplicate, find_later_copies, write_keys
from lmforge.data.minhash import near_duplicates, signature_matrix
from lmforge.data.mix import mix_shard
from lmforge.data.text import paragraph_spans
from lmforge.eval.generated import make_tasks
from lmforge.io.storage import InputError, read_jsonl, write_jsonl_gz

from conftest import generated_task_specs, make_docs

MINHASH = {"ngram": 5, "bands": 20, "rows": 5, "seed": 1, "min_jaccard": 0.5}


def dedup_cfg(tmp_path, partitions=1, **changes):
    return {"partitions": partitions, "paragraphs": {}, "minhash": MINHASH,
            "duckdb": {"memory_limit": "256MB", "threads": 1,
                       "temp_directory": str(tmp_path / "duck")}, **changes}


def run_dedup(tmp_path, shards: list, cfg: dict, name: str = "out") -> dict:
    """deduplicate() over the shards: {method: [rows of each shard]} and the counts."""
    outs = {m: [tmp_path / name / m / f"{i}.jsonl.gz" for i in range(len(shards))]
            for m in METHODS}
    counts = deduplicate(shards, outs, tmp_path / name / "work", cfg)
    return {m: [list(read_jsonl(o)) for o in paths] for m, paths in outs.items()}, counts


def _dolma(shared_data, name):
    return [json.loads(line) for line in gzip.open(shared_data / "dolma" / name)]


def test_paragraph_and_url_dedup_match_dolma_expected_output(shared_data, tmp_path):
    docs = _dolma(shared_data, "provided__documents__000.json.gz")
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    rows, _ = run_dedup(tmp_path, [tmp_path / "docs.jsonl.gz"], dedup_cfg(tmp_path))
    ours = [row["attributes"].get("dedup_para__paragraph", []) for row in rows["dedup_para"][0]]
    expected = [row["attributes"]["bff_duplicate_paragraph_spans"] for row in
                _dolma(shared_data, "expected__dedupe-paragraphs.json.gz")]
    assert sum(map(len, expected)) > 0
    assert ours == expected
    ours = [bool(row["attributes"]) for row in rows["dedup_url"][0]]
    expected = [bool(row["attributes"]) for row in
                _dolma(shared_data, "expected__dedupe-by-url.json.gz")]
    assert any(expected) and ours == expected


def test_paragraph_spans_cover_the_text_like_dolma():
    text = "a\nbb\n\nccc"
    spans = list(paragraph_spans(text))
    assert spans == [(0, 2, "a"), (2, 5, "bb"), (5, 6, ""), (6, 10, "ccc")]


def test_decisions_do_not_depend_on_partitions_and_buckets_split_the_keys(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"line {i}" for i in range(40)]
    texts = ["\n".join(rng.choice(lines, 6)) for _ in range(300)]
    docs = make_docs(texts, [f"https://x.org/{rng.integers(250)}" for _ in texts])
    shards = []
    for i in range(3):
        write_jsonl_gz(tmp_path / f"s{i}.jsonl.gz", docs[i * 100:(i + 1) * 100])
        shards.append(tmp_path / f"s{i}.jsonl.gz")
    one, counts = run_dedup(tmp_path, shards, dedup_cfg(tmp_path), "one")
    assert counts["dedup_para.duplicates"] > 1000 and counts["dedup_url.duplicates"] > 20
    five, counts5 = run_dedup(tmp_path, shards, dedup_cfg(tmp_path, 5), "five")
    assert one == five and counts == counts5
    # Bucket b holds exactly the keys whose digest is b modulo 5, and every bucket some.
    import pyarrow.parquet as pq

    keys = tmp_path / "five" / "work" / "keys" / "00000"
    buckets = [pq.read_table(keys / f"dedup_exact-{b:04d}.parquet") for b in range(5)]
    for b, table in enumerate(buckets):
        assert table.num_rows > 0 and all(h % 5 == b for h in table["h1"].to_pylist())
    assert sum(t.num_rows for t in buckets) == 100


def test_dedup_keeps_first_occurrence_across_shards(tmp_path):
    a = make_docs(["one", "two", "one"], ["http://x.org/a", "https://www.X.org/b/", "http://x.org/c"])
    b = make_docs(["two", "three"], ["http://x.org/b", "http://x.org/a#frag"])
    for d in b:
        d["id"] = "b" + d["id"]
    write_jsonl_gz(tmp_path / "a.jsonl.gz", a)
    write_jsonl_gz(tmp_path / "b.jsonl.gz", b)
    rows, counts = run_dedup(tmp_path, [tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"],
                             dedup_cfg(tmp_path, 2))
    assert counts["documents"] == 5 and counts["dedup_exact.duplicates"] == 2
    flags = [bool(r["attributes"]) for shard in rows["dedup_exact"] for r in shard]
    assert flags == [False, False, True, True, False]
    assert counts["dedup_url.duplicates"] == 2  # x.org/b and x.org/a again
    assert [r["id"] for shard in rows["dedup_url"] for r in shard] == [
        "d0", "d1", "d2", "bd0", "bd1"]


def test_stale_decisions_are_refused(tmp_path):
    cfg = dedup_cfg(tmp_path)
    write_jsonl_gz(tmp_path / "a.jsonl.gz", make_docs(["same", "same", "same"]))
    write_keys(tmp_path / "a.jsonl.gz", 0, tmp_path / "keys", cfg)
    find_later_copies([tmp_path / "keys"], 0, tmp_path / "later", cfg)
    write_jsonl_gz(tmp_path / "a.jsonl.gz", make_docs(["the shard was rewritten"]))
    from lmforge.data.dedup import write_attributes

    with pytest.raises(ValueError, match="stale"):
        write_attributes(tmp_path / "a.jsonl.gz", 0, [tmp_path / "later"],
                         {m: tmp_path / f"{m}.gz" for m in METHODS}, cfg)


def test_minhash_clusters_keep_the_first_document_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    base = [" ".join(rng.choice(vocab, 120)) for _ in range(6)]
    edited = base[2].split()
    edited[60] = "changed"
    shard_a = make_docs(base[:4])
    shard_b = make_docs([" ".join(edited), base[4], base[5]])
    for doc in shard_b:
        doc["id"] = "b-" + doc["id"]
    paths, outs = [], []
    for name, docs in (("a", shard_a), ("b", shard_b)):
        write_jsonl_gz(tmp_path / f"{name}.jsonl.gz", docs)
        paths.append(tmp_path / f"{name}.jsonl.gz")
        outs.append(tmp_path / f"{name}.attrs.gz")
    found = near_duplicates(paths, outs, tmp_path / "w", dedup_cfg(tmp_path, 3))
    flags = [bool(r["attributes"]) for out in outs for r in read_jsonl(out)]
    assert flags == [False, False, False, False, True, False, False]
    assert found["duplicates"] == 1 and found["clusters"] == 1
    (_, _, score), = next(r for r in read_jsonl(outs[1]))["attributes"]["dedup_minhash__duplicate"]
    assert 0.8 < score < 1
    # min_jaccard 0 is datatrove's rule (a shared band decides): documents sharing no band
    # with an earlier one stay unique.
    cfg = dedup_cfg(tmp_path, minhash={**MINHASH, "min_jaccard": 0.0})
    assert near_duplicates(paths, outs, tmp_path / "w0", cfg)["duplicates"] == 1
    from lmforge.data.dedup import DedupConfig

    matrix = signature_matrix(paths[0], DedupConfig.of(dedup_cfg(tmp_path)))
    assert np.array_equal(matrix, signature_matrix(paths[0], DedupConfig.of(dedup_cfg(tmp_path))))


def test_minhash_joins_a_chain_of_near_duplicates_into_one_cluster(tmp_path):
    rng = np.random.default_rng(1)
    words = list(rng.choice([f"w{i}" for i in range(2000)], 200))
    chain = [words]
    for step in range(3):  # each copy edits 8 more words: neighbours similar, ends less so
        edited = list(chain[-1])
        for i in rng.choice(200, 8, replace=False):
            edited[i] = f"edit{step}-{i}"
        chain.append(edited)
    docs = make_docs([" ".join(w) for w in chain])
    write_jsonl_gz(tmp_path / "c.jsonl.gz", docs)
    found = near_duplicates([tmp_path / "c.jsonl.gz"], [tmp_path / "o.gz"], tmp_path / "w",
                            dedup_cfg(tmp_path))
    flags = [bool(r["attributes"]) for r in read_jsonl(tmp_path / "o.gz")]
    assert flags == [False, True, True, True] and found["clusters"] == 1


def test_minhash_union_find_finds_every_component_and_its_smallest_unit(tmp_path):
    """The out-of-core union-find against scipy's connected components on a random graph
    with long chains (many rounds of label spreading) and stars, over two shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from lmforge.data.dedup import UNIT_BITS
    from lmforge.data.minhash import SIGNATURES, clusters

    rng = np.random.default_rng(3)
    nodes = np.concatenate([np.arange(300), (1 << UNIT_BITS) + np.arange(300)])
    chain = rng.permutation(nodes)[:120]  # one path through 120 nodes in random order
    edges = [*zip(chain[:-1], chain[1:], strict=True),
             *(tuple(rng.choice(nodes, 2, replace=False)) for _ in range(150))]
    a, b = np.array([min(e) for e in edges]), np.array([max(e) for e in edges])
    for shard, units in enumerate((nodes[:300], nodes[300:])):
        (tmp_path / f"s{shard}").mkdir()
        width = MINHASH["bands"] * MINHASH["rows"]  # equal signatures: every pair is similar
        signature = pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(len(units) * width, dtype=np.uint64)), width)
        pq.write_table(pa.table({"unit": units, "signature": signature}),
                       tmp_path / f"s{shard}" / SIGNATURES)
    pq.write_table(pa.table({"a": a, "b": b}), tmp_path / "pairs.parquet")
    found = clusters([tmp_path / "pairs.parquet"], [tmp_path / "s0", tmp_path / "s1"],
                     tmp_path / "clusters.parquet", dedup_cfg(tmp_path))
    index = {unit: i for i, unit in enumerate(nodes)}
    graph = coo_matrix((np.ones(len(a)), ([index[u] for u in a], [index[u] for u in b])),
                       shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    first = {c: nodes[component == c].min() for c in np.unique(component)}
    expected = {int(u): int(first[c]) for u, c in zip(nodes, component, strict=True)
                if first[c] != u}
    table = pq.read_table(tmp_path / "clusters.parquet").to_pydict()
    assert dict(zip(table["unit"], table["cluster"], strict=True)) == expected
    assert table["unit"] == sorted(expected) and set(table["score"]) == {1.0}
    assert found["duplicates"] == len(expected) and found["union_find_rounds"] > 2


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
    specs = generated_task_specs(tmp_path / "tasks", config)
    assert sorted(specs) == ["arith_gen", "cloze_mc", "reference_bpb"]  # not held-out splits
    stats = decontaminate(tmp_path / "docs.jsonl.gz", specs, tmp_path / "out.jsonl.gz",
                          config["curate"]["decontam"])
    rows = list(read_jsonl(tmp_path / "out.jsonl.gz"))
    assert [bool(r["attributes"]) for r in rows] == [True, True, False, False]
    (start, end, score), = rows[0]["attributes"]["decontam__overlap"]
    assert docs[0]["text"][start:end].strip() == item.upper() and score == 1.0
    assert stats["contaminated_documents"] == 2


def test_decontamination_covers_every_extra_task_format(shared_data, tmp_path, config):
    """ARC (question file), GSM8K (generation), an OLMES request dump, a perplexity set:
    a page holding one item of each is flagged, and each task counts."""
    from lmforge.eval.items import item_texts
    from lmforge.eval.specs import TaskSpec, decontamination_specs

    arc = {"id": "Mercury_1", "answerKey": "B", "question": {
        "stem": "Which property of a mineral can be determined just by looking at it",
        "choices": [{"label": "A", "text": "hardness"}, {"label": "B", "text": "luster"}]}}
    (tmp_path / "arc.jsonl").write_text(json.dumps(arc) + "\n")
    write_jsonl_gz(tmp_path / "ref.jsonl.gz", [{"id": "r1", "text": " ".join(
        f"reference{i}" for i in range(30))}])
    extra = {
        "arc_easy": {"kind": "choice", "format": "arc", "path": str(tmp_path / "arc.jsonl")},
        "gsm8k": {"kind": "generate", "format": "gsm8k",
                  "path": str(shared_data / "gsm8k" / "train.jsonl")},
        "obqa": {"kind": "choice", "format": "olmes_requests",
                 "path": str(shared_data / "olmes" / "openbookqa" / "rc_0shot")},
        "ref": {"kind": "perplexity", "format": "documents",
                "path": str(tmp_path / "ref.jsonl.gz")},
    }
    evaluate = {**config["evaluate"], "extra_tasks": extra}
    specs = {name: spec for name, spec in decontamination_specs(evaluate, "tasks").items()
             if name in extra}
    assert sorted(specs) == sorted(extra)
    texts = {name: next(item_texts(TaskSpec.from_config(name, spec)))[1]
             for name, spec in specs.items()}
    assert texts["arc_easy"] == ("Which property of a mineral can be determined just by looking "
                                 "at it luster")
    pages = [f"Homework help.\n{text}\nThanks for reading." for text in texts.values()]
    docs = make_docs(pages + ["A page about nothing in particular, long enough to have grams."])
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    decontaminate(tmp_path / "docs.jsonl.gz", specs, tmp_path / "out.jsonl.gz",
                  config["curate"]["decontam"])
    flags = [bool(r["attributes"]) for r in read_jsonl(tmp_path / "out.jsonl.gz")]
    assert flags == [True] * len(extra) + [False]
    bad = {"x": {"kind": "choice", "format": "arc", "path": str(tmp_path / "ref.jsonl.gz")}}
    with pytest.raises(InputError, match="not task 'x'"):
        decontaminate(tmp_path / "docs.jsonl.gz", bad, tmp_path / "o.jsonl.gz",
                      config["curate"]["decontam"])


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
    by_ngram = {"ngram_length": 8, "stride": 1, "overlap_threshold": 0.5,
                "skip_short_paragraphs": False}
    cfg = dedup_cfg(tmp_path, 2, paragraphs={"by_ngram": by_ngram})
    rows, _ = run_dedup(tmp_path, [tmp_path / "d.jsonl.gz"], cfg, "a")
    rows = [r["attributes"].get("dedup_para__paragraph") for r in rows["dedup_para"][0]]
    assert rows[0] is None and rows[2] is None
    (start, end, score), = rows[1]
    assert (start, end) == (0, len(edited) + 1) and score == round(25 / 33, 4)
    assert rows[3] == [[0, 10, 1.0]]
    by_ngram["skip_short_paragraphs"] = True
    rows, _ = run_dedup(tmp_path, [tmp_path / "d.jsonl.gz"], cfg, "b")
    assert [r["attributes"] for r in rows["dedup_para"][0]][3] == {}

from collections import Counter

from warcio.archiveiterator import ArchiveIterator

from lmforge.data import democrawl, sources
from lmforge.eval import generated as tasks
from lmforge.io.storage import read_jsonl


def test_tasks_are_deterministic_and_well_formed(config):
    a = tasks.cloze_items(20, 4, seed=1)
    assert a == tasks.cloze_items(20, 4, seed=1)
    assert all(len(i["choices"]) == 4 and 0 <= i["gold"] < 4 for i in a)
    arith = tasks.arith_items(30, 20, seed=1)
    assert all(int(i["answer"]) == eval(i["question"][8:-1]) for i in arith)


def test_cloze_items_never_occur_in_the_crawl_text():
    pool = "\n".join(p for _, p in sources.crawl_paragraphs())
    for item in tasks.cloze_items(60, 4, seed=99):
        assert tasks.item_text("cloze_mc", item) not in pool


def test_reference_documents_are_held_out_from_the_crawl_and_the_quality_positives():
    from lmforge.data.quality import reference_documents

    docs = tasks.reference_documents()
    crawl_text = "\n".join(p for _, p in sources.crawl_paragraphs())
    assert len(docs) >= 10
    for doc in docs:
        for sentence in sources.sentences(doc["text"]):
            assert len(sentence.split()) < 6 or sentence not in crawl_text
    # Nor a 13-gram: decontamination would flag crawl text that overlaps an evaluation set.
    from lmforge.data.decontam import _ngrams
    from lmforge.data.text import normalized_words

    crawl_grams = _ngrams(normalized_words(crawl_text), 13)
    assert not any(_ngrams(normalized_words(doc["text"]), 13) & crawl_grams for doc in docs)
    positives = "\n".join(reference_documents("pydoc"))
    reference = [para for doc in docs for para in doc["text"].split("\n\n")]
    assert not any(para in positives for para in reference)


def test_demo_crawl_is_byte_identical_and_labelled(demo_crawl, config, tmp_path):
    democrawl.write_demo_crawl(tmp_path, config["crawl"]["demo"], demo_crawl / "tasks",
                               config["seed"])
    for path in sorted((demo_crawl / "crawl").iterdir()):
        assert path.read_bytes() == (tmp_path / path.name).read_bytes(), path.name
    labels = list(read_jsonl(demo_crawl / "crawl" / "labels.jsonl.gz"))
    kinds = Counter(k for label in labels for k in label["kinds"])
    inject = config["crawl"]["demo"]["inject"]
    for kind in ("exact_duplicate", "near_duplicate", "url_duplicate", "non_english", "spam",
                 "pii", "contamination", "non_html"):
        assert kinds[kind] == inject[kind.removesuffix("_duplicate") + "_duplicates"
                                     if kind.endswith("_duplicate") else kind], kind
    assert sum(label["boilerplate"] for label in labels) == inject["boilerplate"]
    assert kinds["toxic"] + kinds["toxic_span"] == inject["toxic"]


def test_warc_records_match_labels(demo_crawl):
    labels = list(read_jsonl(demo_crawl / "crawl" / "labels.jsonl.gz"))
    ids = []
    for shard in sorted((demo_crawl / "crawl").glob("shard-*.warc.gz")):
        with open(shard, "rb") as handle:
            for record in ArchiveIterator(handle):
                assert record.rec_type == "response"
                ids.append(record.rec_headers.get_header("WARC-Record-ID"))
    assert ids == [label["record_id"] for label in labels]


def test_exact_duplicates_repeat_their_original(demo_crawl):
    labels = list(read_jsonl(demo_crawl / "crawl" / "labels.jsonl.gz"))
    by_id = {label["record_id"]: label for label in labels}
    for label in labels:
        if "exact_duplicate" in label["kinds"] or "url_duplicate" in label["kinds"]:
            original = by_id[label["duplicate_of"]]
            assert (original["shard"], original["position"]) < (label["shard"], label["position"])
        if "url_duplicate" in label["kinds"]:
            assert by_id[label["duplicate_of"]]["url"] == label["url"]


def test_sources_are_python_shipped_prose():
    paragraphs = sources.topic_paragraphs()
    assert len(paragraphs) > 50
    assert all(len(p.split()) >= 8 for ps in paragraphs.values() for p in ps)

import gzip

import pytest

from lmforge.data import pii
from lmforge.data.dedup import normalize_url
from lmforge.data.mix import drop_reason, mix_shard, summarize_funnel
from lmforge.data.tag import run_tagger
from lmforge.data.taggers.gopher import gopher_failures, gopher_signals
from lmforge.data.taggers.lang import LanguageTagger
from lmforge.data.taggers.toxic import ToxicTagger, sentence_spans
from lmforge.io.storage import (
    InputError,
    document_files,
    read_json,
    read_jsonl,
    write_jsonl_gz,
    write_jsonl_gz_parts,
)

from conftest import make_docs

PROSE = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch. "
    "In the afternoon the children walk to the river and talk about the books they have read. "
    "Later that evening the family shares a simple dinner of bread, soup and fresh vegetables, "
    "and everyone agrees that it has been a long but happy day with plenty of sunshine. "
)


def test_gopher_passes_prose_and_rejects_repetition(config):
    cfg = config["curate"]["gopher"]
    assert gopher_failures(gopher_signals(PROSE * 1), cfg) == []
    spam = "buy cheap watches now " * 60
    failures = gopher_failures(gopher_signals(spam), cfg)
    assert {"stop_words", "top_2gram_char_fraction", "dup_5gram_char_fraction"} <= set(failures)
    assert "word_count" in gopher_failures(gopher_signals("too short to matter"), cfg)


def test_gopher_duplicate_lines_and_bullets(config):
    cfg = config["curate"]["gopher"]
    lines = "\n".join(["• item one of the list with the words", "• the same line and the end"] * 20)
    failures = gopher_failures(gopher_signals(lines), cfg)
    assert "bullet_lines_ratio" in failures and "dup_line_fraction" in failures


def test_language_tagger(config):
    cfg = config["curate"]["lang"]
    assert "lang__en" in LanguageTagger(cfg).tag_document({"text": PROSE})
    german = "Der alte Mann kauft jeden Tag ein neues Buch in der Stadt und liest es am Abend. " * 3
    assert "lang__de" in LanguageTagger(cfg).tag_document({"text": german})


def test_toxic_tagger_marks_abusive_sentences_and_rejects_abusive_pages(config):
    cfg = config["curate"]["toxic"]
    polite = "The function returns a list of keys. It never raises an error."
    attrs = ToxicTagger(cfg).tag_document({"text": polite})
    assert "toxic__sentence" not in attrs and "toxic__reject" not in attrs
    text = polite + "\nThe author is a stupid idiot.\n" + polite * 10
    attrs = ToxicTagger(cfg).tag_document({"text": text})
    (span,) = attrs["toxic__sentence"]
    assert text[span[0]:span[1]] == "The author is a stupid idiot." and span[2] > 0.8
    assert "toxic__reject" not in attrs  # one sentence: remove the span, keep the page
    rant = "You are a worthless moron. Shut the hell up, you pathetic loser. " + polite
    attrs = ToxicTagger(cfg).tag_document({"text": rant})
    assert len(attrs["toxic__sentence"]) == 2 and attrs["toxic__reject"]
    assert attrs["toxic__fraction"][0][2] > 0.4


def test_sentence_spans():
    text = "One. Two!\nno end\n\n  Three? yes...  \n"
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "One.", "Two!", "no end", "Three?", "yes..."]


def test_pii_find_and_mask():
    text = "Mail jane.doe@example.org or call 555-123-4567 from 192.0.2.7 today."
    found = pii.find(text)
    assert {k: len(v) for k, v in found.items()} == {"email": 1, "phone": 1, "ip": 1}
    spans = [(s, e, k) for k, v in found.items() for s, e in v]
    assert pii.mask(text, spans) == (
        "Mail |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER||| from |||IP_ADDRESS||| today.")


def test_tagger_rows_follow_documents(tmp_path, config):
    docs = make_docs([PROSE, "x y z", PROSE + " mail me at a@b.org"])
    write_jsonl_gz(tmp_path / "d.jsonl.gz", docs)
    counts = run_tagger("pii", tmp_path / "d.jsonl.gz", tmp_path / "a.jsonl.gz", {})
    rows = list(read_jsonl(tmp_path / "a.jsonl.gz"))
    assert [r["id"] for r in rows] == [d["id"] for d in docs]
    assert counts["pii__email"] == 1 and rows[2]["attributes"]["pii__email"]
    with pytest.raises(KeyError, match="unknown tagger"):
        run_tagger("nope", tmp_path / "d.jsonl.gz", tmp_path / "b.jsonl.gz", {})


def test_url_keys_ignore_scheme_case_www_fragment_and_trailing_slash():
    assert normalize_url("HTTPS://www.Example.com/a/#top") == normalize_url("http://example.com/a")


def _write_mix_inputs(tmp_path):
    docs = make_docs([PROSE, PROSE + " write to a@b.org", "kurz", PROSE + "!"])
    email_at = docs[1]["text"].index("a@b.org")
    attrs = [
        {"id": "d0", "attributes": {"lang__en": [[0, 1, 500]]}},
        {"id": "d1", "attributes": {"lang__en": [[0, 1, 500]],
                                    "pii__email": [[email_at, email_at + 7, 1.0]]}},
        {"id": "d2", "attributes": {"lang__de": [[0, 1, 500]], "gopher__reject": [[0, 5, 1]]}},
        {"id": "d3", "attributes": {"lang__en": [[0, 1, 500]], "gopher__reject": [[0, 5, 1]]}},
    ]
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    write_jsonl_gz(tmp_path / "attrs.jsonl.gz", attrs)
    return docs


def test_mixer_funnel_adds_up_and_masks_pii(tmp_path, config):
    docs = _write_mix_inputs(tmp_path)
    cfg = config["mixes"]["web"]
    funnel = mix_shard(tmp_path / "docs.jsonl.gz", [tmp_path / "attrs.jsonl.gz"],
                       tmp_path / "out", tmp_path / "funnel.json", cfg)
    out = list(read_jsonl(tmp_path / "out" / "part-00000.jsonl.gz"))
    assert [d["id"] for d in out] == ["d0", "d1"]
    assert out[1]["text"].endswith("write to |||EMAIL_ADDRESS|||")
    assert funnel["dropped_documents:non_english"] == 1
    assert funnel["dropped_documents:low_quality"] == 1  # d2 is charged to its first rule only
    assert funnel["documents_in"] == len(docs) == funnel["documents_out"] + 2
    total, table = summarize_funnel([tmp_path / "funnel.json"], cfg["exclude"])
    assert total == read_json(tmp_path / "funnel.json") and "| drop: low_quality | -1 |" in table


def test_mixer_refuses_misaligned_attributes(tmp_path, config):
    _write_mix_inputs(tmp_path)
    write_jsonl_gz(tmp_path / "attrs.jsonl.gz", [{"id": "other", "attributes": {}}])
    with pytest.raises(InputError, match="same order"):
        mix_shard(tmp_path / "docs.jsonl.gz", [tmp_path / "attrs.jsonl.gz"],
                  tmp_path / "out", tmp_path / "f.json", config["mixes"]["web"])
    assert list(tmp_path.glob("*out*")) == []  # no partial output directory is left


def read_jsonl_all(paths):
    return [row for path in paths for row in read_jsonl(path)]


def test_mixer_splits_output_into_size_capped_parts(tmp_path):
    docs = make_docs([f"document number {i} " * 20 for i in range(50)])
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", docs)
    write_jsonl_gz(tmp_path / "a.jsonl.gz", [{"id": d["id"], "attributes": {}} for d in docs])
    cfg = {"exclude": [], "mask_pii": False, "max_shard_bytes": 2000}
    funnel = mix_shard(tmp_path / "docs.jsonl.gz", [tmp_path / "a.jsonl.gz"], tmp_path / "out",
                       tmp_path / "f.json", cfg)
    parts = sorted((tmp_path / "out").iterdir())
    assert funnel["output_parts"] == len(parts) > 5
    for part in parts:
        with gzip.open(part, "rb") as handle:
            assert len(handle.read()) <= 2000
    assert [d["id"] for d in read_jsonl_all(document_files([tmp_path / "out"]))] == \
        [d["id"] for d in docs]
    # One row larger than the cap still gets a part of its own.
    counts = write_jsonl_gz_parts(tmp_path / "big", [{"t": "x" * 5000}, {"t": "y"}], 100)
    assert counts == [1, 1]
    assert write_jsonl_gz_parts(tmp_path / "empty", [], 100) == [0]
    big = tmp_path / "big"
    assert document_files([big, tmp_path / "f.json"]) == [
        str(big / "part-00000.jsonl.gz"), str(big / "part-00001.jsonl.gz"),
        str(tmp_path / "f.json")]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="no \\*.jsonl.gz"):
        document_files([tmp_path / "nothing"])


def test_drop_reason_semantics():
    rules = [{"reason": "lang", "attribute": "lang__en", "when": "missing"},
             {"reason": "dup", "attribute": "dedup__duplicate"}]
    assert drop_reason({"lang__fr": [[0, 1, 1]]}, rules) == "lang"
    assert drop_reason({"lang__en": [[0, 1, 1]], "dedup__duplicate": []}, rules) is None
    assert drop_reason({"lang__en": [[0, 1, 1]], "dedup__duplicate": [[0, 1, 1]]}, rules) == "dup"


def test_c4_rules(config):
    from lmforge.data.taggers.c4 import C4Tagger, c4_decisions

    cfg = config["curate"]["c4"]
    good = "\n".join(f"This is sentence number {i} of a well formed page." for i in range(6))
    removed, reason = c4_decisions("Menu\n" + good + "\nWe use cookies on this site.", cfg)
    assert reason is None
    assert [r for _, _, r in removed] == ["no_terminal_punctuation", "policy"]
    assert c4_decisions(good + "\nLorem ipsum dolor sit amet.", cfg)[1] == "lorem_ipsum"
    assert c4_decisions(good + "\nUse a dict like {1: 2} here.", cfg)[1] == "curly_bracket"
    assert c4_decisions("One sentence only here.", cfg)[1] == "too_few_sentences"
    attrs = C4Tagger(cfg).tag_document({"text": "Menu\n" + good})
    assert attrs["c4__line_no_terminal_punctuation"] == [[0, 5, 1.0]] and "c4__reject" not in attrs


def test_source_weights_up_and_down_sample(tmp_path):
    from lmforge.data.mix import sample_copies

    docs = make_docs([f"doc {i}" for i in range(2000)])
    assert all(sample_copies(d, {"test": 2.0}) == 2 for d in docs)
    kept = sum(sample_copies(d, {"test": 0.3}) for d in docs)
    assert 500 < kept < 700  # about 30%
    assert [sample_copies(d, {"test": 1.5}) for d in docs] == \
        [sample_copies(d, {"test": 1.5}) for d in docs]
    assert sample_copies(docs[0], {"other": 0.0}) == 1


def test_quality_classifier_trains_and_scores(tmp_path):
    from lmforge.data.quality import QualityModel, tag_quality, train_classifier

    web = make_docs([f"buy cheap pills now best price deal {i} click here" for i in range(300)])
    write_jsonl_gz(tmp_path / "web.jsonl.gz", web)
    cfg = {"reference": "pydoc", "n_features": 2**16, "l2": 1e-5, "epochs": 10}
    metrics = train_classifier([tmp_path / "web.jsonl.gz"], tmp_path / "q.npz", cfg, seed=1)
    assert metrics["held_out_accuracy"] > 0.9
    model = QualityModel(tmp_path / "q.npz")
    ref, spam = model.scores([PROSE.replace("fox", "function"), web[0]["text"]])
    assert ref > 0.5 > spam
    tag_quality(tmp_path / "web.jsonl.gz", tmp_path / "q.npz", tmp_path / "a.jsonl.gz")
    rows = list(read_jsonl(tmp_path / "a.jsonl.gz"))
    assert len(rows) == 300 and rows[0]["attributes"]["quality__score"][0][2] < 0.5
    train_classifier([tmp_path / "web.jsonl.gz"], tmp_path / "q2.npz", cfg, seed=1)
    assert (tmp_path / "q.npz").read_bytes() == (tmp_path / "q2.npz").read_bytes()


def test_threshold_rule_drops_low_scores():
    rule = [{"reason": "low_score", "attribute": "quality__score", "when": "below",
             "threshold": 0.5}]
    assert drop_reason({"quality__score": [[0, 9, 0.2]]}, rule) == "low_score"
    assert drop_reason({"quality__score": [[0, 9, 0.7]]}, rule) is None
    assert drop_reason({}, rule) == "low_score"

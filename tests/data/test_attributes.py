"""The attribute-producer contract: keys, rounding, counts, batches, atomic shards, registry."""

import gzip
import json

import pytest
import yaml

from lmforge.data.attributes import AttributeStep, attribute_key, run_step
from lmforge.data.taggers import TAGGERS
from lmforge.io.storage import read_jsonl, write_jsonl_gz

from conftest import ROOT


class Lengths(AttributeStep):
    name = "lengths"
    score_digits = 2
    batch_size = 2

    def tag(self, doc):
        self.counts["characters"] += len(doc["text"])
        return {"chars": [(0, len(doc["text"]), len(doc["text"]) / 3)],
                "empty": [] if doc["text"] else [(0, 0, 1.0)]}


def _docs(path, texts):
    write_jsonl_gz(path, [{"id": f"d{i}", "source": "s", "text": t} for i, t in enumerate(texts)])
    return path


def test_run_step_keys_rounds_counts_and_keeps_document_order(tmp_path):
    a = _docs(tmp_path / "a.jsonl.gz", ["abcd", "", "xy"])
    empty = _docs(tmp_path / "empty.jsonl.gz", [])
    counts = run_step(Lengths(), [a, empty], [tmp_path / "a.out.gz", tmp_path / "e.out.gz"])
    rows = list(read_jsonl(tmp_path / "a.out.gz"))
    assert [r["id"] for r in rows] == ["d0", "d1", "d2"]
    assert rows[0]["attributes"] == {"lengths__chars": [[0, 4, 1.33]]}
    assert rows[1]["attributes"] == {"lengths__chars": [[0, 0, 0.0]],
                                     "lengths__empty": [[0, 0, 1.0]]}
    assert list(read_jsonl(tmp_path / "e.out.gz")) == []
    assert counts == {"documents": 3, "lengths__chars": 3, "lengths__empty": 1, "characters": 6}
    assert attribute_key("lengths", "chars") == "lengths__chars"


def test_batches_do_not_change_the_output(tmp_path):
    docs = _docs(tmp_path / "d.jsonl.gz", [f"text {i}" * i for i in range(7)])
    run_step(Lengths(), [docs], [tmp_path / "two.gz"])
    single = Lengths()
    single.batch_size = 1
    run_step(single, [docs], [tmp_path / "one.gz"])
    assert gzip.open(tmp_path / "two.gz").read() == gzip.open(tmp_path / "one.gz").read()


def test_a_failing_step_leaves_no_attribute_file(tmp_path):
    class Fails(AttributeStep):
        name = "fails"

        def tag(self, doc):
            raise ValueError("bad document")

    docs = _docs(tmp_path / "d.jsonl.gz", ["x"])
    with pytest.raises(ValueError, match="bad document"):
        run_step(Fails(), [docs], [tmp_path / "out.gz"])
    assert not (tmp_path / "out.gz").exists()
    with pytest.raises(ValueError):
        run_step(Lengths(), [docs, docs], [tmp_path / "one-output.gz"])


def test_the_schema_offers_exactly_the_registered_taggers():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    offered = schema["properties"]["curate"]["properties"]["taggers"]["items"]["enum"]
    assert sorted(offered) == sorted(TAGGERS) == ["c4", "gopher", "lang", "pii", "toxic"]
    assert all(cls.name == name for name, cls in TAGGERS.items())


def test_every_tagger_writes_only_its_own_keys(tmp_path, config):
    docs = _docs(tmp_path / "d.jsonl.gz", ["The cat sat on the mat. Mail me at a@b.org.\n" * 3])
    for name, cls in TAGGERS.items():
        cfg = config["curate"].get(name, {})
        attributes = cls(cfg).tag_document(json.loads(gzip.open(docs).readline()))
        assert attributes and all(key.startswith(f"{name}__") for key in attributes), name

"""The Hub in and out (`lmforge.io.hub`) with the real `huggingface_hub` client against a
loopback Hub (tests/fakehub.py): a pinned model fetched and evaluated beside our own
checkpoint, a checkpoint published and loaded back with `transformers`, a dataset's files as
documents input, and the errors a user meets."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from lmforge.eval.lm import load
from lmforge.io.hub import dataset_files, fetch_dataset_file, fetch_model, publish
from lmforge.io.storage import InputError, write_jsonl_gz

from conftest import make_docs, tiny_olmo2

TEXTS = [f"Question {i}: how many apple trees grow in garden {i % 9}? Answer: {i % 7} trees."
         for i in range(200)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny OLMo 2 as an lmforge checkpoint (`native`) and exported (`hf`), with its
    tokenizer."""
    return tiny_olmo2(tmp_path_factory.mktemp("tiny"), TEXTS, vocab_size=300, max_seq_len=32)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_pinned_hub_model_is_fetched_once_and_scores_as_our_checkpoint(fake_hub, tiny):
    first = fake_hub.add("org/tiny", folder_files(tiny / "hf"))
    # Later commits on main, and a format a causal LM does not need, must not be fetched.
    fake_hub.add("org/tiny", {"pytorch_model.bin": b"pickle", "model.onnx": b"onnx"})
    record = fetch_model(f"hf:org/tiny@{first}")
    assert record["commit"] == first and "pytorch_model.bin" not in record["files"]
    assert set(record["files"]) == set(folder_files(tiny / "hf"))
    hub_lm = load(record["path"], name="hub")
    ours = load(tiny / "native", tokenizer=tiny / "tokenizer.json")
    requests = [(f"Question {i}: how many apple trees grow in garden", f" {i % 9}?")
                for i in range(6)]
    for a, b in zip(ours.loglikelihood(requests), hub_lm.loglikelihood(requests), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    # A branch resolves to its current commit; offline, the cache answers without a request.
    branch = fetch_model("hf:org/tiny@main")
    assert branch["commit"] == fake_hub.repos[("model", "org/tiny")].refs["main"] != first
    from huggingface_hub import constants

    asked = len(fake_hub.requests)
    constants.HF_HUB_OFFLINE = True  # restored by the fixture
    assert fetch_model(f"hf:org/tiny@{first}")["path"] == record["path"]
    assert len(fake_hub.requests) == asked


def test_hub_errors_name_the_model(fake_hub, tiny):
    fake_hub.add("org/empty", {"README.md": b"# nothing here\n"})
    with pytest.raises(InputError, match="hf:<org>/<name>@<revision>"):
        fetch_model("hf:org/tiny")  # not pinned
    with pytest.raises(InputError, match="hf:org/missing@main: RepositoryNotFoundError"):
        fetch_model("hf:org/missing@main")
    with pytest.raises(InputError, match="RevisionNotFoundError"):
        fetch_model("hf:org/empty@v9")
    with pytest.raises(InputError, match="no config.json and safetensors"):
        fetch_model("hf:org/empty@main")


def test_publish_uploads_the_export_with_a_card_that_transformers_loads(fake_hub, tiny,
                                                                         tmp_path):
    facts = {"tokens_seen": 12_345, "funnel": "| step | kept |\n| --- | --- |\n| all | 9 |",
             "evaluation": "| model | cloze_mc |", "lineage": ["checkpoints/pretrain  <- run"],
             "git_commit": "abc123", "config_hash": "feedbeef"}
    record = publish(tiny / "native", tiny / "tokenizer.json", "org/published", "v1", facts,
                     "first upload")
    uploaded = fake_hub.files("org/published", "v1")
    assert record["commit"] == fake_hub.repos[("model", "org/published")].refs["v1"]
    assert sorted(uploaded) == record["files"]
    for name, data in folder_files(tiny / "hf").items():  # byte for byte the export
        assert uploaded[name] == data
    card = uploaded["README.md"].decode()
    for fact in ("tokens seen: 12,345", "`feedbeef`", "`abc123`", "| all | 9 |",
                 "checkpoints/pretrain  <- run", "| parameters |", "olmo2"):
        assert fact in card
    assert "main" in fake_hub.repos[("model", "org/published")].refs  # v1 is a branch
    from huggingface_hub import snapshot_download

    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        snapshot_download("org/published", revision="v1")).eval()
    ids = torch.randint(0, 300, (1, 12))
    ours = load(tiny / "native", tokenizer=tiny / "tokenizer.json").hidden.__self__
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-4
    # The same files again: no empty commit (the client compares blob ids); a changed card
    # is a new commit on the branch.
    same = publish(tiny / "native", tiny / "tokenizer.json", "org/published", "v1", facts, "2")
    assert same["commit"] == record["commit"]
    changed = publish(tiny / "native", tiny / "tokenizer.json", "org/published", "v1",
                      {**facts, "tokens_seen": 20_000}, "3")
    assert changed["commit"] != record["commit"]
    assert "20,000" in fake_hub.files("org/published", "v1")["README.md"].decode()


def test_hub_dataset_files_are_pinned_and_fetched_byte_identical(fake_hub, tmp_path):
    shard = tmp_path / "part-0.jsonl"
    shard.write_text("".join(json.dumps(d) + "\n" for d in make_docs(["one", "two"])))
    sha = fake_hub.add("org/corpus", {"data/part-0.jsonl": shard.read_bytes(),
                                      "data/part-1.jsonl": b"",
                                      "README.md": b"# corpus\n"}, kind="dataset")
    urls = dataset_files("hf://datasets/org/corpus@main/data/*.jsonl")
    assert urls == [f"hf://datasets/org/corpus@{sha}/data/part-{i}.jsonl" for i in (0, 1)]
    fetch_dataset_file(urls[0], tmp_path / "local.jsonl")
    assert (tmp_path / "local.jsonl").read_bytes() == shard.read_bytes()
    with pytest.raises(InputError, match="matches no file"):
        dataset_files("hf://datasets/org/corpus@main/data/*.parquet")
    with pytest.raises(InputError, match="hf://datasets/<org>/<name>@<revision>/<glob>"):
        dataset_files("hf://datasets/org/corpus/data/*.jsonl")
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # listing needs the Hub: a clear error (restored by fixture)
    with pytest.raises(InputError, match="OfflineModeIsEnabled"):
        dataset_files("hf://datasets/org/corpus@main/data/*.jsonl")


def test_a_hub_model_is_evaluated_beside_ours_in_one_matrix(fake_hub, tiny, tmp_path,
                                                            mlflow_store):
    import yaml

    from lmforge.cli import main
    from lmforge.eval.evaluate import evaluate_pair
    from lmforge.eval.specs import TaskSpec

    commit = fake_hub.add("org/tiny", folder_files(tiny / "hf"))
    (tmp_path / "piqa.jsonl").write_text("".join(
        json.dumps({"goal": f"How many trees in garden {i}?", "sol1": f"{i % 7} trees.",
                    "sol2": "a river.", "label": 0}) + "\n" for i in range(6)))
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", make_docs(TEXTS[:4]))
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({
        "piqa_mc": {"kind": "choice", "format": "piqa", "path": str(tmp_path / "piqa.jsonl"),
                    "formulation": "mc"},
        "docs_ppl": {"kind": "perplexity", "format": "documents",
                     "path": str(tmp_path / "docs.jsonl.gz")}}))
    assert main(["evaluate-matrix", "--models", f"ours={tiny / 'native'}",
                 f"hub=hf:org/tiny@{commit}", "--tokenizer", str(tiny / "tokenizer.json"),
                 "--tasks", str(tmp_path / "tasks.yaml"), "--out-dir", str(tmp_path / "out")]) == 0
    rows = {(r["model"], r["task"]): r
            for r in json.loads((tmp_path / "out" / "summary.json").read_text())}
    for task in ("piqa_mc", "docs_ppl"):  # the same weights: the same scores
        assert rows[("hub", task)]["value"] == pytest.approx(rows[("ours", task)]["value"],
                                                             rel=1e-5)
        assert rows[("hub", task)]["hub_commit"] == commit
        assert rows[("ours", task)]["hub_commit"] is None
    result = json.loads((tmp_path / "out" / "hub" / "piqa_mc.json").read_text())
    assert result["hub"] == {"repo": "org/tiny", "revision": commit, "commit": commit}
    # Token perplexity is in the workflow's tokens: refused for a model with its own tokenizer.
    spec = TaskSpec.from_config("heldout_ppl", {"kind": "token_perplexity", "format": "memmap",
                                                "path": "tokens"})
    with pytest.raises(InputError, match="bits-per-byte task"):
        evaluate_pair(None, spec, tmp_path / "x.json", source=result["hub"])


def test_tokens_seen_add_up_every_stage_and_bad_metrics_are_named(tmp_path):
    from lmforge.io.hub import tokens_seen

    (tmp_path / "a.csv").write_text("step,loss,valid_loss,tokens,flops\n1,3.0,,100,1e9\n"
                                    "2,2.5,2.6,200,2e9\n")
    (tmp_path / "b.csv").write_text("step,loss,valid_loss,tokens,flops\n1,2.0,,50,5e8\n")
    assert tokens_seen([tmp_path / "a.csv", tmp_path / "b.csv"]) == 250
    (tmp_path / "bad.csv").write_text("step,loss\n1,2.0\n")
    with pytest.raises(InputError, match="bad.csv: a training metrics file needs"):
        tokens_seen([tmp_path / "bad.csv"])
    with pytest.raises(InputError, match="missing.csv: not a readable"):
        tokens_seen([tmp_path / "missing.csv"])


def test_a_hub_start_is_our_checkpoint_with_the_same_logits_and_tokenizer(fake_hub, tiny,
                                                                          tmp_path,
                                                                          mlflow_store):
    from lmforge.cli import main
    from lmforge.data.tokenize import load_tokenizer
    from lmforge.model.checkpoint import load_model

    commit = fake_hub.add("org/tiny", folder_files(tiny / "hf"))
    record, init = tmp_path / "start.json", tmp_path / "init"
    assert main(["fetch-hub-model", "--ref", f"hf:org/tiny@{commit}", "--out",
                 str(record)]) == 0
    assert main(["import-hub-model", "--record", str(record), "--out", str(init)]) == 0
    assert main(["hub-tokenizer", "--record", str(record), "--out",
                 str(tmp_path / "tok" / "tokenizer.json")]) == 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        json.loads(record.read_text())["path"]).eval()
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(load_model(init)(ids), reference(ids).logits, atol=1e-5)
    # Our tokenizer already has every special token: the Hub's is taken as it is.
    ours, adopted = (load_tokenizer(tiny / "tokenizer.json"),
                     load_tokenizer(tmp_path / "tok" / "tokenizer.json"))
    assert adopted.get_vocab() == ours.get_vocab()
    assert (tmp_path / "tok" / "tokenizer_config.json").is_file()
    # The from-scratch baseline of a grown Hub start takes the Hub model's architecture.
    assert main(["init-model", "--like", str(init), "--width-factor", "2", "--layers-factor",
                 "2", "--seed", "1", "--out", str(tmp_path / "grown")]) == 0
    grown = load_model(tmp_path / "grown").cfg
    assert (grown.vocab_size, grown.d_model, grown.n_layers) == (300, 64, 4)
    # A record whose snapshot left the cache is named, not a deep traceback.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**json.loads(record.read_text()), "path": str(tmp_path / "x")}))
    assert main(["import-hub-model", "--record", str(stale), "--out",
                 str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()


def test_released_tokenizers_get_the_chat_tokens_in_their_spare_embedding_rows(shared_data,
                                                                               tmp_path):
    from tokenizers import Tokenizer, models

    from lmforge.data.tokenize import PAD, adopt_tokenizer, load_tokenizer
    from lmforge.posttrain.chat import ASSISTANT, SYSTEM, USER

    olmo2 = shared_data / "tokenizers" / "allenai_dolma2.json"
    added = adopt_tokenizer(olmo2, tmp_path / "olmo2" / "tokenizer.json", 100_352)
    assert added == {"vocab_size": 100_281, "added_tokens": [USER, ASSISTANT, SYSTEM]}
    before, after = load_tokenizer(olmo2), load_tokenizer(tmp_path / "olmo2" / "tokenizer.json")
    assert [after.token_to_id(t) for t in (USER, ASSISTANT, SYSTEM)] == [100_278, 100_279,
                                                                         100_280]
    assert after.token_to_id(PAD) == 100_277  # OLMo 2's own pad is kept
    text = "Nine apple trees grow in the garden, said the gardener."
    assert after.encode(text).ids == before.encode(text).ids
    assert after.encode(f"{USER}\n{text}").ids[0] == 100_278
    # OLMoE's tokenizer has <|padding|> and no <|pad|>: ours is added too.
    olmoe = adopt_tokenizer(shared_data / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json",
                            tmp_path / "olmoe" / "tokenizer.json", 50_304)
    assert olmoe["added_tokens"] == [PAD, USER, ASSISTANT, SYSTEM]
    with pytest.raises(InputError, match="more than the model's 100278 embedding rows"):
        adopt_tokenizer(olmo2, tmp_path / "full" / "tokenizer.json", 100_278)
    assert not (tmp_path / "full" / "tokenizer.json").exists()
    bare = tmp_path / "bare.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(bare))
    with pytest.raises(InputError, match="has no <|endoftext|> token"):
        adopt_tokenizer(bare, tmp_path / "bare" / "tokenizer.json", 10)

import json

import numpy as np
import torch

from lmforge.data.tokenize import ASSISTANT, EOS, PAD, load_tokenizer, train_tokenizer
from lmforge.eval import generated as tasks
from lmforge.eval.evaluate import write_summary
from lmforge.eval.lm import load
from lmforge.eval.specs import TaskSpec
from lmforge.eval.tasks import run_task, token_perplexity
from lmforge.io.storage import read_jsonl, write_json, write_jsonl_gz
from lmforge.model.checkpoint import save_model
from lmforge.model.olmo2 import ModelConfig, Olmo2, causal_lm_loss
from lmforge.posttrain.instruct import CONSTRAINT_TEMPLATES, verify_constraint
from lmforge.posttrain.sft import encode_example, make_sft_data, pack, sft_batches

from conftest import make_docs, train_config

TEXTS = [f"Sentence {i} says that the garden has {i % 7} apple trees and a small river nearby."
         for i in range(300)]


def _tokenizer(tmp_path):
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", make_docs(TEXTS))
    train_tokenizer([str(tmp_path / "docs.jsonl.gz")], tmp_path / "tok.json", 500, 1, 0.1)
    return load_tokenizer(tmp_path / "tok.json")


def test_sft_data_avoids_eval_items(tmp_path, config):
    _tokenizer(tmp_path)
    cfg = {"arithmetic_examples": 400, "completion_examples": 50, "constraint_examples": 30}
    counts = make_sft_data([str(tmp_path / "docs.jsonl.gz")], tmp_path / "sft.jsonl.gz", cfg,
                           config["tasks"], seed=1, valid_fraction=0.1)
    assert counts["examples"] == 480
    held = {i["question"] for i in tasks.arith_items(config["tasks"]["arith_gen"]["items"],
                                                     config["tasks"]["arith_gen"]["max_operand"],
                                                     config["tasks"]["seed"])}
    examples = list(read_jsonl(tmp_path / "sft.jsonl.gz"))
    questions = {ex["messages"][0]["content"] for ex in examples}
    assert not held & questions
    # Every constrained answer meets its constraint (the verifiers RLVR rewards with).
    constrained = [ex for ex in examples if ex["skill"] == "constraint"]
    assert len(constrained) == 30
    for ex in constrained:
        instruction = ex["messages"][0]["content"].split("\n")[-1]
        name = next(n for n, t in CONSTRAINT_TEMPLATES.items() if t[0] == instruction)
        truth = json.dumps({"func_name": name, **CONSTRAINT_TEMPLATES[name][1]})
        assert verify_constraint(ex["messages"][1]["content"], truth)


def test_loss_only_on_assistant_tokens(tmp_path):
    tok = _tokenizer(tmp_path)
    example = {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                            {"role": "assistant", "content": "5"}]}
    ids, trained = encode_example(tok, example, 64)
    start = ids.index(tok.token_to_id(ASSISTANT))
    assert not any(trained[: start + 2])  # the prompt and "<|assistant|>\n"
    assert tok.decode([i for i, t in zip(ids, trained) if t], skip_special_tokens=False) == \
        "5" + EOS
    write_jsonl_gz(tmp_path / "sft.jsonl.gz", [example] * 3)
    batches, info = sft_batches(tok, tmp_path / "sft.jsonl.gz", 32,
                                train_config(micro_batch_size=2, grad_accum=1), seed=0)
    inputs, targets, docs = batches(0, 0)
    assert inputs.shape == targets.shape == docs.shape == (2, 31) and info["examples"] == 3
    per_row = 32 // len(ids)
    assert info["rows_per_epoch"] == -(-3 // per_row)
    assert (targets[0] != -100).sum() == per_row * sum(trained)


def test_non_assistant_tokens_contribute_no_gradient(tmp_path):
    """The loss's gradient reaches the logits only where the next token is an assistant
    token of the same packed example."""
    tok = _tokenizer(tmp_path)
    conversations = [[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "What is 2 + 3?"},
                      {"role": "assistant", "content": "5"},
                      {"role": "user", "content": "And 4 + 4?"},
                      {"role": "assistant", "content": "8"}],
                     [{"role": "user", "content": "Complete: the cat"},
                      {"role": "assistant", "content": "sat on the mat"}]]
    encoded = [encode_example(tok, {"messages": m}, 256) for m in conversations]
    (inputs, labels, docs), = pack(encoded, 256, tok.token_to_id(PAD))  # one row
    model = Olmo2(ModelConfig(vocab_size=tok.get_vocab_size(), d_model=16, n_layers=1,
                              n_heads=2, mlp_hidden=32, max_seq_len=256))
    logits = model(inputs[None], doc_ids=docs[None])
    logits.retain_grad()
    causal_lm_loss(logits, labels[None]).backward()
    touched = logits.grad[0].abs().sum(-1) > 0
    trained = torch.tensor([t for _, flags in encoded for t in flags] + [False] * 256)[:256]
    assert torch.equal(touched, trained[1:])  # exactly the positions predicting trained tokens
    assert touched.sum() == sum(sum(flags) for _, flags in encoded) > 0


def test_packed_examples_compute_what_they_compute_alone(tmp_path):
    tok = _tokenizer(tmp_path)
    examples = [encode_example(tok, {"messages": [
        {"role": "user", "content": f"What is {a} + {b}?"},
        {"role": "assistant", "content": str(a + b)}]}, 64) for a, b in ((1, 2), (10, 7), (3, 3))]
    inputs, _, docs = pack(examples, 64, tok.token_to_id(PAD))[0]
    model = Olmo2(ModelConfig(vocab_size=tok.get_vocab_size(), d_model=16, n_layers=2,
                              n_heads=2, mlp_hidden=32, max_seq_len=64))
    with torch.no_grad():
        packed = model(inputs[None], doc_ids=docs[None])[0]
        cursor = 0
        for ids, _ in examples:
            alone = model(torch.tensor([ids]))[0]
            assert torch.allclose(packed[cursor:cursor + len(ids)][: len(ids) - 1],
                                  alone[: len(ids) - 1], atol=1e-5)
            cursor += len(ids)


def _uniform_lm(tok_path, vocab):
    """A model whose every next-token distribution is uniform, behind the evaluation
    interface (an lmforge checkpoint and its tokenizer)."""
    model = Olmo2(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, mlp_hidden=16,
                              max_seq_len=32))
    torch.nn.init.zeros_(model.lm_head.weight)
    save_model(model, tok_path.parent / "uniform")
    return load(tok_path.parent / "uniform", tokenizer=tok_path)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tmp_path):
    tok = _tokenizer(tmp_path)
    lm = _uniform_lm(tmp_path / "tok.json", tok.get_vocab_size())
    # The held-out tokens in two files, read as one stream.
    (np.arange(120) % 50).astype(np.uint16).tofile(tmp_path / "a.valid.npy")
    (np.arange(120, 200) % 50).astype(np.uint16).tofile(tmp_path / "b.valid.npy")
    write_json(tmp_path / "meta.json", {"dtype": "uint16", "splits": {"valid": {"files": [
        {"path": "a.valid.npy", "tokens": 120}, {"path": "b.valid.npy", "tokens": 80}]}}})
    metrics, windows = token_perplexity(lm, tmp_path, max_tokens=150)
    assert metrics["tokens"] == 150 == sum(w["tokens"] for w in windows)
    assert abs(metrics["perplexity"] - tok.get_vocab_size()) < 1e-2


def test_multiple_choice_scoring(tmp_path):
    tok = _tokenizer(tmp_path)
    lm = _uniform_lm(tmp_path / "tok.json", tok.get_vocab_size())
    # Every token costs log(1/V) under a uniform model: the summed score prefers the choice
    # with fewer tokens, so which answer wins is known in advance.
    short, long = "has", "river nearby and apple trees in the garden"
    assert len(tok.encode(" " + short).ids) < len(tok.encode(" " + long).ids)
    items = [{"context": "Sentence 3 says that the garden", "choices": [short, long], "gold": 0},
             {"context": "Sentence 4 says that the garden", "choices": [long, short], "gold": 0}]
    write_jsonl_gz(tmp_path / "cloze.jsonl.gz", items)
    spec = TaskSpec.from_config("cloze", {"kind": "choice", "format": "lmforge_cloze",
                                          "path": str(tmp_path / "cloze.jsonl.gz")})
    result = run_task(lm, spec)
    assert result["metrics"]["instances"] == 2 and result["metrics"]["chance"] == 0.5
    assert result["metrics"]["acc_raw"] == 0.5  # right on the first item, wrong on the second
    assert [r["predicted"]["raw"] for r in result["instances"]] == [0, 1]


def test_summary_has_one_row_per_model_with_uncertainty_and_contamination(tmp_path):
    results = [{"model": m, "task": "cloze", "kind": "choice", "primary_metric": "acc_raw",
                "metrics": {"instances": 50, "acc_raw": acc, "acc_raw_stderr": 0.05,
                            "acc_raw_ci95": [acc - 0.1, acc + 0.1]}}
               for m, acc in (("init", 0.25), ("pretrain", 0.5))]
    table = write_summary(results, tmp_path / "s.md", tmp_path / "s.parquet",
                          tmp_path / "s.json",
                          {"cloze": {"contamination_ngram": 0.02, "contamination_exact": 0.0}})
    assert "| init | 0.25 ± 0.05 |" in table and "| pretrain | 0.5 ± 0.05 |" in table
    assert "| pretrain | cloze | 50 | [0.400, 0.600] | 2.0% / 0.0% |" in table
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [(r["model"], r["value"], r["contamination_ngram"]) for r in rows] == [
        ("init", 0.25, 0.02), ("pretrain", 0.5, 0.02)]

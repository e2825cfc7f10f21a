import numpy as np
import torch

from lmforge import tasks
from lmforge.evaluate import heldout_perplexity, multiple_choice, summary_table
from lmforge.model import ModelConfig, Olmo2
from lmforge.sft import encode_example, make_sft_data, sft_batches
from lmforge.storage import read_jsonl, write_jsonl_gz
from lmforge.tokenize import ASSISTANT, load_tokenizer, train_tokenizer

from conftest import make_docs

TEXTS = [f"Sentence {i} says that the garden has {i % 7} apple trees and a small river nearby."
         for i in range(300)]


def _tokenizer(tmp_path):
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", make_docs(TEXTS))
    train_tokenizer([str(tmp_path / "docs.jsonl.gz")], tmp_path / "tok.json", 500, 1, 0.1)
    return load_tokenizer(tmp_path / "tok.json")


def test_sft_data_avoids_eval_items(tmp_path, config):
    _tokenizer(tmp_path)
    cfg = {"arithmetic_examples": 400, "cloze_examples": 50}
    counts = make_sft_data([str(tmp_path / "docs.jsonl.gz")], tmp_path / "sft.jsonl.gz", cfg,
                           config["tasks"], seed=1, valid_fraction=0.1)
    assert counts["examples"] == 450
    held = {i["question"] for i in tasks.arith_items(config["tasks"]["arith_gen"]["items"],
                                                     config["tasks"]["arith_gen"]["max_operand"],
                                                     config["tasks"]["seed"])}
    questions = {ex["messages"][0]["content"] for ex in read_jsonl(tmp_path / "sft.jsonl.gz")}
    assert not held & questions


def test_loss_only_on_assistant_tokens(tmp_path):
    tok = _tokenizer(tmp_path)
    example = {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                            {"role": "assistant", "content": "5"}]}
    ids, labels = encode_example(tok, example, 64)
    start = ids.index(tok.token_to_id(ASSISTANT))
    assert all(label == -100 for label in labels[: start + 2])
    assert tok.decode([label for label in labels if label != -100]).startswith("5")
    write_jsonl_gz(tmp_path / "sft.jsonl.gz", [example] * 3)
    batches, info = sft_batches(tok, tmp_path / "sft.jsonl.gz", 32,
                                {"micro_batch_size": 2, "grad_accum": 1}, seed=0)
    inputs, targets = batches(0, 0)
    assert inputs.shape == targets.shape == (2, 31) and info["examples"] == 3
    assert (targets != -100).sum() == 2 * sum(label != -100 for label in labels)


def _uniform_model(vocab):
    model = Olmo2(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, mlp_hidden=16,
                              max_seq_len=32))
    torch.nn.init.zeros_(model.lm_head.weight)
    return model.eval()


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    result = heldout_perplexity(_uniform_model(50), np.arange(200) % 50, max_tokens=150)
    assert result["tokens"] == 150
    assert abs(result["perplexity"] - 50) < 1e-3


def test_multiple_choice_scoring(tmp_path):
    tok = _tokenizer(tmp_path)
    model = _uniform_model(tok.get_vocab_size())
    # Every token costs log(1/V) under a uniform model: the summed score prefers the choice
    # with fewer tokens, so which answer wins is known in advance.
    short, long = "has", "river nearby and apple trees in the garden"
    assert len(tok.encode(" " + short).ids) < len(tok.encode(" " + long).ids)
    items = [{"context": "Sentence 3 says that the garden", "choices": [short, long], "gold": 0},
             {"context": "Sentence 4 says that the garden", "choices": [long, short], "gold": 0}]
    result = multiple_choice(model, tok, items)
    assert result["items"] == 2 and result["chance"] == 0.5
    assert result["acc"] == 0.5  # right on the first item, wrong on the second


def test_summary_table_has_one_row_per_model():
    rows = [{"model": m, "task": "heldout_ppl", "metrics": {"perplexity": p}}
            for m, p in (("init", 4000.0), ("pretrain", 150.0))]
    table = summary_table(rows)
    assert "| init | 4000 |" in table and "| pretrain | 150 |" in table

import re

import pytest
import torch

from lmforge.data.tokenize import PAD, load_tokenizer
from lmforge.io.storage import read_jsonl
from lmforge.model.checkpoint import load_model, load_prompt, save_model
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.posttrain import promptability
from lmforge.posttrain.sft import answer_rows

from conftest import tokenizer_corpus

# Quotes inside sentences: the tasks quote the text they ask about.
TEXTS = [f"Sentence {i} says that the garden has {i % 7} apple trees and a small river nearby. "
         f'The old miller said "stop" while counting sacks of flour before the market opened.'
         for i in range(300)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tokenizer_corpus(tmp_path_factory.mktemp("prompt"), TEXTS)


def _model(vocab: int) -> Olmo2:
    torch.manual_seed(0)
    return Olmo2(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2,
                             mlp_hidden=64, max_seq_len=96))


def test_a_soft_prompt_acts_as_embedded_tokens_before_the_input():
    model = _model(50)
    first, rest = torch.randint(0, 50, (1, 4)), torch.randint(0, 50, (3, 7))
    prefix = model.model.embed_tokens.weight[first[0]]
    whole = model(torch.cat([first.expand(3, -1), rest], 1))
    assert torch.allclose(model(rest, prefix=prefix), whole[:, 4:], atol=1e-5)
    with pytest.raises(ValueError, match="do not combine"):
        model(rest, doc_ids=torch.zeros_like(rest), prefix=prefix)


def test_soft_prompted_checkpoint_is_the_decoder_plus_its_prompt(tmp_path):
    decoder = _model(50)
    wrapped = promptability.SoftPrompted(decoder, promptability.initial_prompt(decoder, 5, 1))
    save_model(wrapped, tmp_path)
    loaded = load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 decoder.state_dict().values()))
    assert torch.equal(load_prompt(tmp_path), wrapped.soft_prompt.detach())
    # Initialised from vocabulary embeddings, as Lester et al. recommend.
    vocab = decoder.model.embed_tokens.weight
    assert all((row == vocab).all(-1).any() for row in load_prompt(tmp_path))


def test_prompt_tasks_are_balanced_right_and_held_out(corpus):
    cfg = {"train_per_task": 40, "shot_pool": 16, "test_per_task": 20}
    counts = promptability.make_prompt_tasks([str(corpus / "docs.jsonl.gz")], corpus / "tasks",
                                             cfg, seed=3, valid_fraction=0.1)
    assert counts == {"train": 120, "heldout": 108}
    train = list(read_jsonl(corpus / "tasks" / "train.jsonl.gz"))
    heldout = list(read_jsonl(corpus / "tasks" / "heldout.jsonl.gz"))
    assert {i["task"] for i in train} == set(promptability.TRAIN_TASKS)
    assert {i["task"] for i in heldout} == set(promptability.HELDOUT_TASKS)
    assert not set(promptability.TRAIN_TASKS) & set(promptability.HELDOUT_TASKS)
    for item in train + heldout:
        question, yes = item["input"], item["gold"] == 0
        if item["task"] == "sum_check":
            a, b, c = map(int, re.findall(r"\d+", question))
            assert (a + b == c) == yes
        elif item["task"] == "larger":
            a, b = map(int, re.findall(r"\d+", question))
            assert (a > b) == yes
        elif item["task"] in ("contains_word", "starts_with"):
            word, text = re.match(r"Does this \w+ (?:contain|start with) the word (\S+)\? "
                                  r"\"(.*)\"\nAnswer:$", question).groups()
            found = word in text.split() if item["task"] == "contains_word" else \
                text.split()[0] == word
            assert found == yes
    for task in promptability.HELDOUT_TASKS:
        test = [i for i in heldout if i["task"] == task and i["split"] == "test"]
        assert len(test) == 20 and 0.3 <= sum(i["gold"] == 0 for i in test) / 20 <= 0.7


def test_prompt_tuning_trains_only_the_prompt_and_fits_the_shots(corpus):
    tok = load_tokenizer(corpus / "tok.json")
    pad = tok.token_to_id(PAD)
    model = _model(tok.get_vocab_size())
    shots = [{"task": "t", "input": f"Is sentence {i} short?\nAnswer:",
              "choices": promptability.CHOICES, "gold": i % 2} for i in range(16)]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    start = promptability.initial_prompt(model, 4, 0)

    def loss(prompt):
        inputs, labels = answer_rows(
            [promptability.encode(tok, s, s["gold"]) for s in shots], pad)
        with torch.no_grad():
            logits = model(inputs, prefix=prompt)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                 ignore_index=-100)

    tuned = promptability.prompt_tune(model, tok, shots, pad, start, steps=30, lr=3e-2)
    assert loss(tuned) < loss(start) - 0.1
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())

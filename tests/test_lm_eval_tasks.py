"""The evaluation interfaces: models (`lmforge.lm`) and ranked-classification tasks
(`lmforge.evaltasks`), on models and files made here."""

import gzip
import json

import pytest
import torch
import torch.nn.functional as F

from lmforge.checkpoint import save_model
from lmforge.evaltasks import ChoiceInstance, choice_metrics, load_olmes_requests, score_choices
from lmforge.hf import export_hf
from lmforge.lm import load
from lmforge.model import ModelConfig, Olmo2
from lmforge.storage import InputError, write_jsonl_gz
from lmforge.tokenize import train_tokenizer

from conftest import make_docs

TEXTS = [f"Question {i}: how many apple trees grow in garden {i % 9}? Answer: {i % 7} trees."
         for i in range(300)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random OLMo 2 with a tokenizer trained here, as an lmforge checkpoint and as a
    `transformers` directory."""
    out = tmp_path_factory.mktemp("lm")
    write_jsonl_gz(out / "docs.jsonl.gz", make_docs(TEXTS))
    train_tokenizer([str(out / "docs.jsonl.gz")], out / "tokenizer.json", 400, 1, 0.1)
    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=400, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64,
                              max_seq_len=48))
    save_model(model, out / "native")
    export_hf(model, out / "hf", tokenizer=out / "tokenizer.json")
    return out


def test_request_encoding_follows_lm_eval(checkpoint):
    lm = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json")
    context, continuation = lm.encode_pair("Question 3: how many ", "apple trees")
    assert context == lm.encode("Question 3: how many")  # the trailing space moves...
    assert lm.decode(continuation) == " apple trees"  # ...to the continuation
    assert lm.encode_pair("", "Answer") == ([lm.eot_id], lm.encode("Answer"))


def test_scores_equal_a_plain_forward_pass_in_any_batching(checkpoint):
    native = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json", batch_size=3)
    hf = load(checkpoint / "hf", batch_size=16)  # `transformers`' own Olmo2ForCausalLM
    requests = [(f"Question {i}: how many apple trees grow in garden", f" {i % 9}?")
                for i in range(10)] + [("Answer:", " 3 trees."), ("Answer:", " 3 trees.")]
    requests.append(("x " * 80, " long context, cut to the last max_length tokens"))
    ours, theirs = native.loglikelihood(requests), hf.loglikelihood(requests)
    model = native.hidden.__self__
    for (context, continuation), a, b in zip(requests, ours, theirs):
        ctx, cont = native.encode_pair(context, continuation)
        ids = (ctx + cont)[-(model.cfg.max_seq_len + 1):]
        logprobs = F.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)
        expected = logprobs[-len(cont):].gather(-1, torch.tensor(cont)[:, None]).sum().item()
        assert a.logprob == pytest.approx(expected, abs=1e-5)
        assert b.logprob == pytest.approx(expected, abs=1e-4)
        assert a.tokens == len(cont) and a.is_greedy == b.is_greedy


def test_generation_stops_at_a_stop_sequence(checkpoint):
    lm = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json")
    free = lm.generate("Question 1: how many", stop=[], max_new_tokens=12)
    assert free and len(lm.encode(free)) <= 12
    cut = free[len(free) // 2:][:2]
    assert cut not in lm.generate("Question 1: how many", stop=[cut], max_new_tokens=12)


def test_loading_refuses_what_is_not_a_model(tmp_path, checkpoint):
    with pytest.raises(InputError, match="no readable config.json"):
        load(tmp_path)
    with pytest.raises(InputError, match="give the tokenizer.json"):
        load(checkpoint / "native")


def _dump(directory, rows, offset=1000000):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(
        {"task_name": "toy", "task_config": {"metric_kwargs": {"uncond_docid_offset": offset}}}))
    with gzip.open(directory / "requests.jsonl.gz", "wt") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _request(doc_id, idx, context, continuation, label):
    return {"request_type": "loglikelihood", "doc_id": doc_id, "idx": idx, "native_id": doc_id,
            "label": label, "request": {"context": context, "continuation": continuation}}


def test_olmes_dumps_load_with_their_unconditional_requests(tmp_path):
    rows = [_request(d, i, f"Question {d}:", f" choice {i}", d % 2) for d in range(3)
            for i in range(2)]
    rows += [_request(1000000 + d, i, "Answer:", f" choice {i}", d % 2) for d in range(3)
             for i in range(2)]
    _dump(tmp_path / "toy", rows[::-1])  # order in the file does not matter
    _, instances = load_olmes_requests(tmp_path / "toy")
    assert [(i.context, i.continuations, i.gold, i.uncond_context) for i in instances] == [
        (f"Question {d}:", [" choice 0", " choice 1"], d % 2, "Answer:") for d in range(3)]
    _dump(tmp_path / "gen", [{**rows[0], "request_type": "generate_until"}])
    with pytest.raises(InputError, match="not a ranked-classification request"):
        load_olmes_requests(tmp_path / "gen")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(InputError, match="not a readable OLMES request dump"):
        load_olmes_requests(tmp_path / "broken")


def test_normalisations_pick_different_choices_as_defined(checkpoint):
    lm = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json")
    instance = ChoiceInstance(id="q", context="Question 5: how many apple trees grow?",
                              continuations=[" 5", " 5 trees in garden 5."], gold=0)
    [result] = score_choices(lm, [instance])
    raw = result["logprobs"]
    assert result["normalised"]["per_token"] == [raw[0] / result["tokens"][0],
                                                 raw[1] / result["tokens"][1]]
    assert result["normalised"]["per_char"] == [raw[0] / 2, raw[1] / 21]
    assert result["normalised"]["uncond"] == [a - b for a, b in
                                              zip(raw, result["uncond_logprobs"])]
    for name, values in result["normalised"].items():
        assert result["predicted"][name] == max(range(2), key=values.__getitem__)
    [without] = score_choices(lm, [instance], unconditional=False)
    assert "uncond" not in without["predicted"] and without["logprobs"] == raw


def test_accuracy_comes_with_a_standard_error_and_a_bootstrap_interval():
    results = [{"gold": 0, "predicted": {"raw": int(i % 4 == 0)}} for i in range(200)]
    metrics = choice_metrics(results)
    assert metrics["acc_raw"] == 0.75 and metrics["instances"] == 200
    assert metrics["acc_raw_stderr"] == pytest.approx((0.75 * 0.25 / 199) ** 0.5, rel=0.01)
    low, high = metrics["acc_raw_ci95"]
    assert low < 0.75 < high and high - low == pytest.approx(4 * metrics["acc_raw_stderr"],
                                                             rel=0.25)
    assert "acc_per_char" not in metrics

import json
import re

import pytest
import torch

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.eval import generated as tasks
from lmforge.io.storage import InputError
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.posttrain import dpo, instruct, rlvr
from lmforge.posttrain import report as posttrain_report
from lmforge.posttrain.sft import answer_rows
from lmforge.train.loop import train

from conftest import tokenizer_corpus, train_config

TEXTS = [f"Sentence {i} says that the garden has {i % 7} apple trees and a small river nearby. "
         f"The old miller counted {i % 5} sacks of flour before the evening market opened."
         for i in range(300)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tokenizer_corpus(tmp_path_factory.mktemp("posttrain"), TEXTS)


POSTTRAIN_DATA = {"preference_pairs": {"arithmetic": 200, "constraint": 40},
                  "rlvr_prompts": {"arithmetic": 150, "constraint": 40},
                  "heldout": {"arithmetic": 20, "constraint": 40}}


@pytest.fixture(scope="module")
def posttrain_data(corpus, config):
    counts = instruct.make_posttrain_data([str(corpus / "docs.jsonl.gz")], corpus / "data",
                                          POSTTRAIN_DATA, config["tasks"], seed=1,
                                          valid_fraction=0.1)
    return corpus / "data", counts


def _model(tokenizer, **kwargs) -> Olmo2:
    torch.manual_seed(0)
    return Olmo2(ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=32, n_layers=1,
                             n_heads=2, mlp_hidden=64, max_seq_len=96, **kwargs))


def _user(text):
    return [{"role": "user", "content": text}]


def test_verifiers():
    assert instruct.verify_number("So the total is 1,234.", "1234")
    assert not instruct.verify_number("12, or maybe 13", "12")  # the last number counts
    assert not instruct.verify_number("no number", "3")
    lower = json.dumps({"func_name": "validate_lowercase"})
    assert instruct.verify_constraint("all small here", lower)
    assert not instruct.verify_constraint("Not all", lower)
    assert not instruct.verify_constraint("  ", lower)  # an empty answer satisfies nothing
    end = json.dumps({"func_name": "validate_end", "end_phrase": "indeed", "N": None})
    assert instruct.verify_constraint("it rains indeed", end)
    assert not instruct.verify_constraint("indeed it rains", end)
    with pytest.raises(InputError, match="not one of"):
        instruct.verify_constraint("x", json.dumps({"func_name": "validate_rhyme"}))
    with pytest.raises(InputError, match="func_name"):
        instruct.verify_constraint("x", "lowercase please")
    with pytest.raises(InputError, match="continuation"):
        instruct.verify_constraint("x", json.dumps({"func_name": "validate_lowercase",
                                                    "continuation": "..."}))


def test_constraint_answers_must_complete_the_sentence():
    """A generated prompt's ground truth carries the sentence's continuation: an answer in
    the right form about something else fails; an external record (no continuation) keeps
    the form check only."""
    words = "The old miller counted three sacks of flour before the evening market opened."
    prompt, truth, answer = instruct.constrained_example(words.split(), "validate_end")
    assert prompt.startswith("Complete the sentence: The old miller counted three sacks\n")
    assert json.loads(truth)["continuation"] == "of flour before the evening market opened."
    assert instruct.verify_constraint(answer, truth)
    assert instruct.verify_constraint("OF FLOUR before the market, opened indeed", truth)
    for off_topic in ("the given port number indeed", "indeed", "of flour indeed",
                      "of flour before the evening market opened and then the small river "
                      "ran past the garden with its many old apple trees indeed"):
        assert not instruct.verify_constraint(off_topic, truth), off_topic
    external = json.dumps({"func_name": "validate_end", "end_phrase": "indeed"})
    assert instruct.verify_constraint("the given port number indeed", external)


@pytest.mark.parametrize("kind, record, message", [
    ("rlvr", {"messages": _user("2+2?"), "ground_truth": "4", "dataset": "poetry"},
     "no verifier"),
    ("rlvr", {"messages": _user("2+2?"), "ground_truth": 4, "dataset": "gsm8k"},
     "ground_truth must be a string"),
    ("rlvr", {"messages": _user("x") + [{"role": "assistant", "content": "y"}],
              "ground_truth": "4", "dataset": "gsm8k"}, "must not end with an assistant"),
    ("rlvr", {"messages": _user("x"), "dataset": "ifeval", "ground_truth": json.dumps(
        {"func_name": "validate_lowercase", "continuation": 3})}, "continuation 3 must be"),
    ("preference", {"chosen": _user("a") + [{"role": "assistant", "content": "b"}],
                    "rejected": _user("c") + [{"role": "assistant", "content": "d"}]},
     "share the prompt"),
    ("preference", {"chosen": _user("a") + _user("b"), "rejected": _user("a") + _user("b")},
     "end with an assistant"),
    ("preference", {"chosen": [{"role": "assistant", "content": "b"}],
                    "rejected": [{"role": "assistant", "content": "c"}]}, "needs a prompt"),
    ("sft", {"messages": [{"role": "robot", "content": "hi"}]}, "role must be"),
    ("sft", ["not", "an", "object"], "expected a JSON object"),
])
def test_readers_name_the_malformed_record(tmp_path, kind, record, message):
    good = {"sft": {"messages": _user("hi") + [{"role": "assistant", "content": "hello"}]},
            "preference": {"chosen": _user("a") + [{"role": "assistant", "content": "b"}],
                           "rejected": _user("a") + [{"role": "assistant", "content": "c"}]},
            "rlvr": {"messages": _user("2+2?"), "ground_truth": "4", "dataset": "gsm8k"}}[kind]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError, match=message) as err:
        instruct.read_records(path, kind)
    assert "record 1" in str(err.value) or "data.jsonl:2" in str(err.value)  # names the line
    path.write_text(json.dumps(good) + "\n")
    assert instruct.read_records(path, kind) == [good]


def test_reads_gsm8k_in_open_instruct_rlvr_format(shared_data):
    records = instruct.read_records(shared_data / "gsm8k" / "gsm8k_rlvr_train.jsonl", "rlvr")
    assert len(records) == 7473 and {r["dataset"] for r in records} == {"gsm8k"}
    first = records[0]
    assert instruct.verify(first, f"She sold 48 + 24 = {first['ground_truth']} clips.")
    assert not instruct.verify(first, "She sold 48 clips.")
    # open-instruct's own test rows name a dataset ("test") no verifier checks: a clear error.
    with pytest.raises(InputError, match="'test' has no verifier"):
        instruct.read_records(shared_data / "instruct" / "rlvr_test.jsonl", "rlvr")


def _operands(question: str) -> tuple[int, int]:
    a, b = map(int, re.findall(r"\d+", question)[:2])
    return a, b


def test_generated_data_holds_out_and_verifies(corpus, config, posttrain_data):
    folder, counts = posttrain_data
    assert counts == {"preference_train": 240, "preference_valid": 60, "rlvr_train": 190,
                      "rlvr_valid": 60}
    arith = config["tasks"]["arith_gen"]
    held = set(tasks.eval_arith_pairs(arith["items"], arith["max_operand"],
                                      config["tasks"]["seed"]))
    rlvr_train = instruct.read_records(folder / "rlvr_train.jsonl.gz", "rlvr")
    rlvr_valid = instruct.read_records(folder / "rlvr_valid.jsonl.gz", "rlvr")
    for records, inside in ((rlvr_train, False), (rlvr_valid, True)):
        sums = [r for r in records if r["dataset"] == "arithmetic"]
        assert sums and all((_operands(r["messages"][0]["content"]) in held) == inside
                            for r in sums)
        assert all(int(r["ground_truth"]) == sum(_operands(r["messages"][0]["content"]))
                   for r in sums)
    valid_sums = [_operands(r["messages"][0]["content"]) for r in rlvr_valid
                  if r["dataset"] == "arithmetic"]
    assert len(set(valid_sums)) == len(valid_sums) == 20  # distinct held-out pairs
    # Each constraint prompt's ground truth, rebuilt from the training sentences.
    truths = {}
    for words in instruct.corpus_sentences([str(corpus / "docs.jsonl.gz")], 1, 0.1)[0]:
        for name in instruct.CONSTRAINT_TEMPLATES:
            prompt, truth, _ = instruct.constrained_example(words, name)
            truths[prompt] = truth
    rejected_kinds = set()
    for pair in instruct.read_records(folder / "preference_train.jsonl.gz", "preference"):
        prompt = pair["chosen"][0]["content"]
        if pair["dataset"] == "arithmetic":
            record = {"dataset": "arithmetic", "ground_truth": str(sum(_operands(prompt)))}
        else:
            record = {"dataset": "ifeval", "ground_truth": truths[prompt]}
            name, arguments, _ = instruct.constraint_from(truths[prompt])
            form_only = json.dumps({"func_name": name, **arguments})
            rejected_kinds.add("content" if instruct.verify_constraint(
                pair["rejected"][-1]["content"], form_only) else "form")
        assert instruct.verify(record, pair["chosen"][-1]["content"])
        assert not instruct.verify(record, pair["rejected"][-1]["content"])
    assert rejected_kinds == {"content", "form"}  # both are preferred against


def _reference_answer(record: dict) -> str:
    """The generated answer to a constraint prompt: its continuation, transformed."""
    name, _, continuation = instruct.constraint_from(record["ground_truth"])
    return instruct.CONSTRAINT_TEMPLATES[name][2](continuation)


def test_a_constant_answer_fails_the_held_out_constraint_prompts(posttrain_data):
    """A constant "indeed" meets the form of three constraints in four but completes no
    sentence: the generated reference answers all pass, the constant almost never does."""
    records = [r for r in instruct.read_records(posttrain_data[0] / "rlvr_valid.jsonl.gz",
                                                "rlvr") if r["dataset"] == "ifeval"]
    assert len(records) == 40
    assert all(instruct.verify(r, _reference_answer(r)) for r in records)
    constant = [instruct.verify(r, "indeed") for r in records]
    assert sum(constant) <= 0.05 * len(records)
    form_only = []
    for r in records:
        name, arguments, _ = instruct.constraint_from(r["ground_truth"])
        form_only.append(instruct.verify_constraint(
            "indeed", json.dumps({"func_name": name, **arguments})))
    assert sum(form_only) >= 0.5 * len(records)  # what the form check alone let through


def test_report_shows_the_constant_floor_lengths_and_samples(corpus, posttrain_data, tmp_path):
    tok = load_tokenizer(corpus / "tok.json")
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    records = instruct.read_records(posttrain_data[0] / "rlvr_valid.jsonl.gz", "rlvr")
    pairs, _ = dpo.encode_pairs(tok, instruct.read_records(
        posttrain_data[0] / "preference_valid.jsonl.gz", "preference"), 97)
    models = {"sft": _model(tok), "rlvr": _model(tok)}
    report = posttrain_report.evaluate(models, tok, records, pairs, eos, pad, max_new_tokens=4,
                                       beta=0.1, baseline="sft")
    assert set(report["accuracy"]["all"]) == {"sft", "rlvr"}
    sums = [r["ground_truth"] for r in records if r["dataset"] == "arithmetic"]
    constant = report["constant"]
    assert constant["answers"] == {"arithmetic": max(sums, key=sums.count), "ifeval": "indeed"}
    assert constant["accuracy"]["arithmetic"]["accuracy"] == sums.count(
        constant["answers"]["arithmetic"]) / len(sums)  # the best a constant does
    assert constant["accuracy"]["ifeval"]["accuracy"] <= 0.05
    assert set(report["mean_words"]) == {"sft", "rlvr", "constant"}
    assert report["mean_words"]["constant"]["ifeval"] == 1
    assert 0 < report["mean_words"]["sft"]["all"] <= 4  # at most one word a token
    assert [s["dataset"] for s in report["samples"]] == ["arithmetic"] * 3 + ["ifeval"] * 3
    sample = report["samples"][-1]
    assert sample["prompt"].startswith("Complete the sentence: ")
    assert set(sample["responses"]) == {"sft", "rlvr", "constant"}
    posttrain_report.write_report(report, tmp_path / "report.md", tmp_path / "report.json")
    text = (tmp_path / "report.md").read_text()
    assert "| sft | rlvr | constant |" in text and 'ifeval "indeed"' in text
    assert "## Mean response length (words)" in text and "| constant | 1.0 |" in text
    assert text.count("> Complete the sentence: ") == 3
    assert f"| rlvr | {posttrain_report._table_text(sample['responses']['rlvr']['response'])} |" \
        in text
    assert json.loads((tmp_path / "report.json").read_text())["samples"] == report["samples"]
    metrics = posttrain_report.flat_metrics(report)
    assert metrics["ifeval.constant"] == constant["accuracy"]["ifeval"]["accuracy"]
    assert "all.rlvr.mean_words" in metrics


def test_dpo_loss_is_the_formula():
    policy, reference = torch.randn(6, 2), torch.randn(6, 2)
    loss, stats = dpo.dpo_loss(policy, reference, beta=2.0)
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    assert torch.isclose(loss, torch.log1p(torch.exp(-2.0 * margin)).mean())
    assert torch.isclose(stats["reward_accuracy"], (margin > 0).float().mean())
    same, stats = dpo.dpo_loss(reference, reference, beta=2.0)
    assert torch.isclose(same, torch.log(torch.tensor(2.0))) and stats["reward_accuracy"] == 0


def test_dpo_scores_only_the_compared_answer(corpus):
    tok = load_tokenizer(corpus / "tok.json")
    prompt = _user("What is 2 + 3?") + [{"role": "assistant", "content": "5"}] + _user("And?")
    record = {"chosen": prompt + [{"role": "assistant", "content": "the river"}],
              "rejected": prompt + [{"role": "assistant", "content": "apple trees"}]}
    [(chosen, rejected)], skipped = dpo.encode_pairs(tok, [record], 96)
    decode = lambda side: tok.decode([i for i, t in zip(*side) if t],  # noqa: E731
                                     skip_special_tokens=False)
    assert (decode(chosen), decode(rejected), skipped) == ("the river" + EOS,
                                                           "apple trees" + EOS, 0)
    assert dpo.encode_pairs(tok, [record] * 2 + [{**record, "chosen": prompt + [
        {"role": "assistant", "content": "garden " * 80}]}], 96)[1] == 1
    # Length normalisation: the mean over labelled tokens, not the sum.
    inputs, labels = dpo.rows([(chosen, rejected)], tok.token_to_id(PAD))
    logits = torch.randn(*inputs.shape, tok.get_vocab_size())
    summed = dpo.sequence_logps(logits, labels, average=False)
    mean = dpo.sequence_logps(logits, labels, average=True)
    assert torch.allclose(mean, summed / (labels != -100).sum(-1))


def test_dpo_raises_heldout_reward_accuracy(corpus, tmp_path):
    """Chosen answers are lower case, rejected ones the same words in capitals: on pairs of
    held-out sentences the DPO model's implicit reward ranks the chosen one first."""
    tok = load_tokenizer(corpus / "tok.json")
    pad = tok.token_to_id(PAD)

    def pairs(texts):
        out = []
        for text in texts:
            words = text.split()[:8]
            prompt = _user("Complete: " + " ".join(words[:3]))
            rest = " ".join(words[3:]).lower()
            out.append({"chosen": prompt + [{"role": "assistant", "content": rest}],
                        "rejected": prompt + [{"role": "assistant", "content": rest.upper()}]})
        return dpo.encode_pairs(tok, out, 96)[0]

    train_pairs, valid_pairs = pairs(TEXTS[:200]), pairs(TEXTS[250:])
    model = _model(tok)
    cfg = train_config(loss_type="dpo_norm", beta=2.0, steps=30, micro_batch_size=8, lr=3e-3,
                       min_lr_ratio=0.0, schedule="linear", log_every=10, eval_every=10)
    reference = dpo.reference_logps(model, train_pairs, pad, average=True)
    valid_reference = dpo.reference_logps(model, valid_pairs, pad, average=True)
    summary = train(model, dpo.preference_batches(train_pairs, reference, pad, cfg, seed=0),
                    cfg, 0, tmp_path / "ckpt", tmp_path / "metrics.csv",
                    objective=dpo.objective,
                    heldout=dpo.heldout_fn(valid_pairs, valid_reference, pad, cfg))
    assert summary["final_valid_reward_accuracy"] > 0.9
    assert summary["final_valid_loss"] < 0.6
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"reward_accuracy", "reward_margin", "valid_reward_accuracy"} <= set(header)


def test_batched_sampling_matches_each_prompt_alone(corpus):
    tok = load_tokenizer(corpus / "tok.json")
    model = _model(tok)
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    prompts = [rlvr.prompt_ids(tok, {"messages": _user(text)})
               for text in ("What is 2 + 3?", "Complete: the old miller counted five sacks")]
    together = rlvr.sample(model, prompts, 2, 6, 0.0, 1.0, eos, pad)
    alone = [rlvr.sample(model, [p], 2, 6, 0.0, 1.0, eos, pad)[0] for p in prompts]
    assert together == alone and len(together[0][0][0]) == 6
    first = rlvr.sample(model, prompts, 3, 6, 1.0, 0.9, eos, pad, torch.Generator().manual_seed(3))
    again = rlvr.sample(model, prompts, 3, 6, 1.0, 0.9, eos, pad, torch.Generator().manual_seed(3))
    assert first == again


class _Engine:
    """What the objective uses of a DeepSpeed engine, around a plain module."""

    def __init__(self, module):
        self.module, self.device = module, torch.device("cpu")

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_grpo_step_favours_the_verified_response(corpus, monkeypatch):
    tok = load_tokenizer(corpus / "tok.json")
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    model, reference = _model(tok), _model(tok)
    good = tok.encode("the garden").ids + [eos]
    bad, endless = tok.encode("THE GARDEN").ids + [eos], tok.encode("the river").ids
    monkeypatch.setattr(rlvr, "sample", lambda *args, **kwargs: [[
        (good, True), (bad, True), (endless, False)]])
    record = {"messages": _user("Say it softly."), "dataset": "ifeval",
              "ground_truth": json.dumps({"func_name": "validate_lowercase"})}
    cfg = train_config(samples_per_prompt=3, max_new_tokens=4, temperature=1.0, top_p=1.0,
                       beta=0.05, correct_reward=10.0, unterminated_reward=-10.0,
                       micro_batch_size=3)
    objective = rlvr.grpo_objective(reference, tok, eos, pad)
    prompt = rlvr.prompt_ids(tok, record)

    def logps():
        with torch.no_grad():
            inputs, labels = answer_rows([(prompt, r) for r in (good, bad, endless)], pad)
            return dpo.sequence_logps(model(inputs), labels, average=False)

    before = logps()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, parts, tokens = objective(_Engine(model), {"records": [record], "seed": 0,
                                                     "micro_step": 0}, cfg)
    loss.backward()
    optimizer.step()
    change = logps() - before
    # "the river" is lower case too, but never ended: the unterminated penalty, not a reward.
    assert parts["reward"] == pytest.approx((10 + 0 - 10) / 3) and parts["accuracy"] == 1 / 3
    assert parts["unterminated"] == pytest.approx(1 / 3) and tokens == len(good + bad + endless)
    assert change[0] > 0 > change[2]
    assert parts["kl"] == pytest.approx(0, abs=1e-6)  # reference and policy start equal


def test_a_step_samples_its_prompts_once_and_splits_the_responses():
    records = [{"id": i} for i in range(40)]
    cfg = train_config(samples_per_prompt=4, micro_batch_size=8, grad_accum=2)
    ranks = [rlvr.prompt_batches(records, cfg, seed=5, rank=r, world_size=2) for r in (0, 1)]
    first, second = ranks[0](3, 0), ranks[0](3, 1)
    assert first["records"] == second["records"] and first["seed"] == second["seed"]
    assert (first["micro_step"], second["micro_step"], len(first["records"])) == (0, 1, 4)
    other = ranks[1](3, 0)["records"]
    assert not {r["id"] for r in other} & {r["id"] for r in first["records"]}
    with pytest.raises(ValueError, match="not a multiple of samples_per_prompt 3"):
        rlvr.prompts_per_rank(cfg.replace(samples_per_prompt=3))


def test_group_advantages():
    advantages = rlvr.group_advantages(torch.tensor([[10.0, 0.0, 0.0, 10.0], [5.0] * 4]))
    assert torch.allclose(advantages[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.866, atol=1e-3)
    assert torch.equal(advantages[1], torch.zeros(4))  # nothing to learn from a tie



def test_rlvr_refuses_sharded_parameters(capsys):
    from lmforge.cli import main

    cfg = train_config(micro_batch_size=4, zero_stage=3).to_dict()
    assert main(["rlvr", "--checkpoint", "c", "--train", "t", "--valid", "v", "--tokenizer",
                 "k", "--cfg", json.dumps(cfg), "--seed", "0", "--out", "o", "--metrics",
                 "m"]) == 2
    assert "zero_stage 3" in capsys.readouterr().err

"""The evaluation interfaces: models (`lmforge.eval.lm`) and ranked-classification tasks
(`lmforge.eval.tasks`), on models and files made here."""

import gzip
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.eval.formats import (
    ChoiceInstance,
    load_choice_instances,
    load_olmes_requests,
    read_records,
)
from lmforge.eval.lm import load
from lmforge.eval.specs import TaskSpec
from lmforge.eval.tasks import (
    choice_metrics,
    extract_answer,
    gsm8k_instances,
    run_task,
    score_choices,
)
from lmforge.io.storage import InputError, write_jsonl_gz

from conftest import make_docs, tiny_olmo2

TEXTS = [f"Question {i}: how many apple trees grow in garden {i % 9}? Answer: {i % 7} trees."
         for i in range(300)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random OLMo 2 with a tokenizer trained here, as an lmforge checkpoint and as a
    `transformers` directory."""
    return tiny_olmo2(tmp_path_factory.mktemp("lm"), TEXTS, vocab_size=400, max_seq_len=48)


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
    assert [(i.requests, i.gold, i.uncond_context) for i in instances] == [
        ([(f"Question {d}:", " choice 0"), (f"Question {d}:", " choice 1")], d % 2, "Answer:")
        for d in range(3)]
    _dump(tmp_path / "gen", [{**rows[0], "request_type": "generate_until"}])
    with pytest.raises(InputError, match="not a ranked-classification request"):
        load_olmes_requests(tmp_path / "gen")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(InputError, match="not a readable OLMES request dump"):
        load_olmes_requests(tmp_path / "broken")


def test_normalisations_pick_different_choices_as_defined(checkpoint):
    lm = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json")
    context = "Question 5: how many apple trees grow?"
    instance = ChoiceInstance(id="q", gold=0,
                              requests=[(context, " 5"), (context, " 5 trees in garden 5.")])
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
    results = [{"gold": 0, "predicted": {"raw": int(i % 4 == 0)}, "logprobs": [-1.0, -2.0]}
               for i in range(200)]
    metrics = choice_metrics(results)
    assert metrics["acc_raw"] == 0.75 and metrics["instances"] == 200
    assert metrics["chance"] == 0.5
    assert metrics["acc_raw_stderr"] == pytest.approx((0.75 * 0.25 / 199) ** 0.5, rel=0.01)
    low, high = metrics["acc_raw_ci95"]
    assert low < 0.75 < high and high - low == pytest.approx(4 * metrics["acc_raw_stderr"],
                                                             rel=0.25)
    assert "acc_per_char" not in metrics


RECORDS = {  # one record per benchmark, in the fields of its published files
    "arc": {"id": "Mercury_1", "question": {"stem": "Which is a metal?", "choices": [
        {"text": "wood", "label": "A"}, {"text": "iron", "label": "B"}]}, "answerKey": "B"},
    "openbookqa": {"id": "7-1", "question_stem": "Sunlight is", "choices": {
        "text": ["dark", "energy", "cold"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    "piqa": {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "paint it", "label": 0},
    "sciq": {"question": "What do plants make?", "distractor1": "rocks", "distractor2": "salt",
             "distractor3": "iron", "correct_answer": "sugar", "support": ""},
    "hellaswag": {"ind": 4, "activity_label": "Baking", "ctx_a": "A man mixes flour.",
                  "ctx_b": "he", "endings": ["bakes it [title] well.", "swims."], "label": "0"},
    "boolq": {"question": "is the sky blue", "passage": "The sky is blue.", "answer": True},
    "copa": {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
             "question": "cause", "label": 0, "idx": 3},
    "winogrande": {"qID": "w1", "sentence": "The cup broke the glass because _ was hard.",
                   "option1": "the cup", "option2": "the glass", "answer": "1"},
}


def test_benchmark_formats_become_olmes_requests(tmp_path):
    expected = {
        "arc": ([("Question: Which is a metal?\nAnswer:", " wood"),
                 ("Question: Which is a metal?\nAnswer:", " iron")], 1),
        "openbookqa": ([("Question: Sunlight is\nAnswer:", f" {c}")
                        for c in ("dark", "energy", "cold")], 1),
        "piqa": ([("Question: Open a jar\nAnswer:", " twist the lid"),
                  ("Question: Open a jar\nAnswer:", " paint it")], 0),
        "sciq": ([("Question: What do plants make?\nAnswer:", f" {c}")
                  for c in ("rocks", "salt", "iron", "sugar")], 3),
        "hellaswag": ([("Baking: A man mixes flour. He", " bakes it. well."),
                       ("Baking: A man mixes flour. He", " swims.")], 0),
        "boolq": ([("The sky is blue.\nQuestion: Is the sky blue?\nAnswer:", " yes"),
                   ("The sky is blue.\nQuestion: Is the sky blue?\nAnswer:", " no")], 0),
        "copa": ([("The man fell because", " he slipped."),
                  ("The man fell because", " he sang.")], 0),
        "winogrande": ([("The cup broke the glass because the cup", " was hard."),
                        ("The cup broke the glass because the glass", " was hard.")], 0),
    }
    for fmt, record in RECORDS.items():
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text(json.dumps(record) + "\n")
        [instance] = load_choice_instances(fmt, path)
        assert (instance.requests, instance.gold) == expected[fmt], fmt
    [mc] = load_choice_instances("arc", tmp_path / "arc.jsonl", formulation="mc")
    assert mc.requests[1] == ("Question: Which is a metal?\n A. wood\n B. iron\nAnswer:", " B")
    assert mc.uncond_context is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({"goal": "x"}) + "\n")
    with pytest.raises(InputError, match="record 0 is not in piqa's format"):
        load_choice_instances("piqa", tmp_path / "bad.jsonl")


def test_copa_records_give_exactly_the_olmes_prompts(shared_data):
    _, dumped = load_olmes_requests(shared_data / "olmes" / "copa" / "rc_0shot")
    rows = read_records(shared_data / "olmes" / "copa" / "rc_0shot" / "requests.jsonl.gz")
    docs = {row["doc_id"]: row["doc"] for row in rows if row["doc_id"] < 1000000}
    from lmforge.eval.formats import INSTANCE_FORMATS

    ours = [INSTANCE_FORMATS["copa"](docs[d]) for d in sorted(docs)]
    assert [(i.requests, i.gold) for i in ours] == [(i.requests, i.gold) for i in dumped]


def test_records_read_from_jsonl_parquet_and_arrow_directories(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"goal": f"goal {i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(5)]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "piqa.parquet")
    (tmp_path / "saved").mkdir()  # the layout of `datasets`' save_to_disk: Arrow IPC streams
    for part, chunk in enumerate((table.slice(0, 3), table.slice(3))):
        with pa.OSFile(str(tmp_path / "saved" / f"data-{part:05d}-of-00002.arrow"), "wb") as f:
            with pa.ipc.new_stream(f, chunk.schema) as writer:
                writer.write_table(chunk)
    write_jsonl_gz(tmp_path / "piqa.jsonl.gz", rows)
    for source in ("piqa.parquet", "saved", "piqa.jsonl.gz"):
        assert read_records(tmp_path / source) == rows, source
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .arrow files"):
        read_records(tmp_path / "empty")
    (tmp_path / "corrupt.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="cannot read evaluation records"):
        read_records(tmp_path / "corrupt.jsonl.gz")


def test_answer_extraction_and_fixed_few_shot_prompts(tmp_path):
    assert extract_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert extract_answer("She earns $10.") == "10"
    assert extract_answer("-3 then 2.5") == "2.5" and extract_answer("none") == ""
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
            for i in range(20)]
    write_jsonl_gz(tmp_path / "train.jsonl.gz", rows)
    write_jsonl_gz(tmp_path / "test.jsonl.gz", rows[:2])
    first, again, other = (gsm8k_instances(tmp_path / "test.jsonl.gz",
                                           tmp_path / "train.jsonl.gz", 3, seed)
                           for seed in (1, 1, 2))
    assert [i.prompt for i in first] == [i.prompt for i in again]
    assert first[0].prompt != other[0].prompt
    assert first[0].prompt.count("Question:") == 4 and first[0].prompt.endswith(
        "Question: What is 0 + 1?\nAnswer:")
    assert [i.answer for i in first] == ["1", "2"]


def test_rolling_perplexity_per_domain_and_bits_per_byte(checkpoint, tmp_path):
    lm = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json")
    long_text = " ".join(TEXTS[:12])  # several windows of max_length tokens
    tokens = lm.encode(long_text)
    assert len(tokens) > 2 * lm.max_length
    model = lm.hidden.__self__
    expected = 0.0
    sequence = [lm.eot_id] + tokens
    for start in range(0, len(tokens), lm.max_length):
        window = sequence[start:start + lm.max_length + 1]
        logprobs = F.log_softmax(model(torch.tensor([window[:-1]]))[0], dim=-1)
        expected += logprobs.gather(-1, torch.tensor(window[1:])[:, None]).sum().item()
    logprob, count = lm.rolling_loglikelihood(long_text)
    assert count == len(tokens) and logprob == pytest.approx(expected, rel=1e-5)

    docs = [{"id": str(i), "text": TEXTS[i], "source": "web" if i % 3 else "books"}
            for i in range(9)]
    write_jsonl_gz(tmp_path / "heldout.jsonl.gz", docs)
    spec = TaskSpec.from_config("paloma_toy", {"kind": "perplexity", "format": "documents",
                                               "path": str(tmp_path / "heldout.jsonl.gz")})
    result = run_task(lm, spec)
    metrics = result["metrics"]
    assert set(metrics["domains"]) == {"web", "books"}
    assert metrics["documents"] == 9 == sum(d["documents"] for d in metrics["domains"].values())
    total = sum(r["logprob"] for r in result["instances"])
    assert metrics["bits_per_byte"] == pytest.approx(
        -total / (math.log(2) * sum(len(d["text"].encode()) for d in docs)))
    assert result["primary_metric"] == "bits_per_byte"


def test_task_specs_are_checked(tmp_path):
    with pytest.raises(InputError, match="unexpected keyword"):
        TaskSpec.from_config("t", {"kind": "choice", "format": "arc", "path": "x", "shots": 1})
    with pytest.raises(InputError, match="unknown kind"):
        TaskSpec.from_config("t", {"kind": "ranking", "format": "arc", "path": "x"})


def test_workflow_task_specs_name_what_is_wrong():
    from lmforge.eval.specs import workflow_task_specs

    cfg = {"tasks": ["cloze_mc", "arc"], "max_ppl_tokens": 10, "max_new_tokens": 4,
           "extra_tasks": {"arc": {"kind": "choice", "format": "arc", "path": "arc.jsonl"}}}
    specs = workflow_task_specs(cfg, "t", "tok", "held.jsonl.gz")
    assert specs["cloze_mc"]["path"] == "t/cloze_mc.jsonl.gz" and specs["arc"]["format"] == "arc"
    with pytest.raises(InputError, match="neither a workflow task"):
        workflow_task_specs({**cfg, "tasks": ["arc_e"]}, "t", "tok", "h")
    with pytest.raises(InputError, match="redefines"):
        workflow_task_specs({**cfg, "extra_tasks": {"cloze_mc": cfg["extra_tasks"]["arc"]}},
                            "t", "tok", "h")
    with pytest.raises(InputError, match="unknown kind"):
        workflow_task_specs({**cfg, "extra_tasks": {"arc": {"kind": "x", "format": "arc",
                                                            "path": "a"}}}, "t", "tok", "h")


def test_evaluate_matrix_runs_every_model_on_every_task(checkpoint, tmp_path, mlflow_store):
    import yaml

    from lmforge.cli import main

    (tmp_path / "piqa.jsonl").write_text("".join(
        json.dumps({"goal": f"How many trees in garden {i}?", "sol1": f"{i % 7} trees.",
                    "sol2": "a river.", "label": 0}) + "\n" for i in range(6)))
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", make_docs(TEXTS[:4]))
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({
        "piqa_mc": {"kind": "choice", "format": "piqa", "path": str(tmp_path / "piqa.jsonl"),
                    "formulation": "mc"},
        "docs_ppl": {"kind": "perplexity", "format": "documents",
                     "path": str(tmp_path / "docs.jsonl.gz")}}, sort_keys=False))
    assert main(["evaluate-matrix", "--models", f"native={checkpoint / 'native'}",
                 f"hf={checkpoint / 'hf'}", "--tokenizer", str(checkpoint / "tokenizer.json"),
                 "--tasks", str(tmp_path / "tasks.yaml"), "--out-dir",
                 str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["model"], r["task"]) for r in rows] == [
        ("native", "piqa_mc"), ("native", "docs_ppl"), ("hf", "piqa_mc"), ("hf", "docs_ppl")]
    # the same weights through lmforge and through transformers: the same results
    assert rows[0]["value"] == rows[2]["value"]
    assert rows[1]["value"] == pytest.approx(rows[3]["value"], rel=1e-5)
    assert "Bits per byte by domain, docs_ppl:" in (tmp_path / "out" / "summary.md").read_text()
    instances = json.loads((tmp_path / "out" / "hf" / "piqa_mc.json").read_text())["instances"]
    assert len(instances) == 6 and all("predicted" in i for i in instances)
    (tmp_path / "bad.yaml").write_text("[1, 2]")
    assert main(["evaluate-matrix", "--models", f"m={checkpoint / 'hf'}", "--tasks",
                 str(tmp_path / "bad.yaml"), "--out-dir", str(tmp_path / "x")]) == 2


def test_requests_sharing_their_input_share_a_batch_row(checkpoint):
    lm = load(checkpoint / "native", tokenizer=checkpoint / "tokenizer.json", batch_size=64)
    rows_seen = []
    hidden = lm.hidden
    lm.hidden = lambda ids: rows_seen.append(len(ids)) or hidden(ids)
    context = "Question: how many apple trees?\n A. 3\n B. 4\n C. 5\nAnswer:"
    letters = lm.loglikelihood([(context, f" {letter}") for letter in "ABC"])
    assert rows_seen == [1]  # one forward row for the three one-token continuations
    alone = [lm.loglikelihood([(context, f" {letter}")])[0] for letter in "ABC"]
    assert [s.logprob for s in letters] == pytest.approx([s.logprob for s in alone], abs=1e-6)
    # the same tokens split differently are different requests
    whole, split = lm.loglikelihood([("Answer:", " 3 trees."), ("Answer: 3", " trees.")])
    assert whole.tokens > split.tokens and whole.logprob < split.logprob


def test_few_shot_choice_prompts_are_fixed_by_the_seed(tmp_path):
    for split, start in (("train", 0), ("test", 100)):
        (tmp_path / f"{split}.jsonl").write_text("".join(
            json.dumps({"goal": f"goal {i}", "sol1": f"yes {i}", "sol2": f"no {i}",
                        "label": i % 2}) + "\n" for i in range(start, start + 10)))
    spec = {"kind": "choice", "format": "piqa", "path": str(tmp_path / "test.jsonl"),
            "num_shots": 2, "shots_path": str(tmp_path / "train.jsonl")}
    from lmforge.eval.formats import with_few_shot

    pool = load_choice_instances("piqa", tmp_path / "train.jsonl")
    tests = load_choice_instances("piqa", tmp_path / "test.jsonl")
    first, again = (with_few_shot(tests, pool, 2, seed=7) for _ in range(2))
    assert [i.requests for i in first] == [i.requests for i in again]
    context = first[0].requests[0][0]
    assert context.count("Question: goal") == 3 and context.endswith(
        "\n\nQuestion: goal 100\nAnswer:")
    shots = context.split("\n\n")[:2]  # each shot is a solved example: its gold answer
    assert all(s.split(" ")[-2] in ("yes", "no") for s in shots)
    assert with_few_shot(tests, pool, 2, seed=8)[0].requests != first[0].requests
    with pytest.raises(InputError, match="needs shots_path"):
        TaskSpec.from_config("t", {**spec, "shots_path": None})

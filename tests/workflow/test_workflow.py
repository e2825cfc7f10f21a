"""The Snakemake workflow itself, on the tiny config (shortened training), in a temp copy."""

import csv
import json
import sqlite3

import pytest
import yaml

from workflow_helpers import corpus_digests, snakemake

pytestmark = pytest.mark.workflow
STAGES = ["make_tasks", "crawl_demo", "extract", "tag", "dedup", "mix", "funnel", "stats",
          "train_tokenizer", "tokenize", "init_model", "pretrain", "grow", "sft_data", "sft",
          "heldout_docs", "evaluate", "eval_summary", "loss_plot", "anneal", "soup", "baseline",
          "growth_report", "midtrain_report", "instruct_data", "dpo", "rlvr", "posttrain_report",
          "prompt_tasks", "promptable", "promptability_report", "scenes", "vlm", "vlm_report",
          "vision_loss_plot"]


def test_wrong_config_key_or_type_fails_before_any_job(repo, tmp_path):
    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["pretrain"]["stpes"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(repo, tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode != 0 and "stpes" in proc.stderr + proc.stdout
    config["pretrain"].pop("stpes")
    config["model"]["d_model"] = "wide"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(repo, tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode != 0 and "'wide' is not of type 'integer'" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_dry_run_lists_every_stage(repo, tmp_path):
    out = snakemake(repo, tmp_path, "-n", "--configfile", str(repo / "fast.yaml")).stdout
    for stage in STAGES:
        assert f"rule {stage}:" in out or f"localrule {stage}:" in out, stage


def test_slurm_profile_plans_every_job(repo, tmp_path):
    out = snakemake(repo, tmp_path, "-n", "--profile", str(repo / "profiles/slurm"),
                    "--configfile", str(repo / "fast.yaml"))
    assert "pretrain" in out.stdout and "This was a dry-run" in out.stdout


def test_tiny_dag_trains_models_that_beat_untrained_ones(finished):
    rows = json.loads((finished / "results/eval/summary.json").read_text())
    ppl = {r["model"]: r["perplexity"] for r in rows if r["task"] == "heldout_ppl"}
    assert ppl["pretrain"] < ppl["init"] / 5
    assert ppl["baseline"] < ppl["init"] / 5
    assert ppl["grow"] < ppl["pretrain"] * 1.05
    midtrain = {"anneal-midtrain-s1", "anneal-midtrain-s2", "soup-midtrain", "anneal-web-s1"}
    assert {r["model"] for r in rows} == {"init", "pretrain", "grow", "baseline", "sft"} | \
        midtrain
    assert {m for m in ppl if m in midtrain} == midtrain
    bits = {r["model"]: r["value"] for r in rows if r["task"] == "heldout_domains"}
    assert bits["pretrain"] < bits["init"] * 0.8  # bits per byte on held-out documents
    # Directions that held across seeds in `make experiments` (benchmarks/RESULTS.md), here on
    # the shortened run (measured: soup 369.0 vs anneals' mean 372.4; reference bits per byte
    # anneals' mean 2.224 vs web control 2.250, soup 2.221).
    reference = {r["model"]: r["value"] for r in rows if r["task"] == "reference_bpb"}
    anneals = ("anneal-midtrain-s1", "anneal-midtrain-s2")
    for metric in (ppl, reference):
        assert metric["soup-midtrain"] < sum(metric[a] for a in anneals) / 2, metric
    assert sum(reference[a] for a in anneals) / 2 < reference["anneal-web-s1"], reference
    cloze = json.loads((finished / "results/eval/sft/cloze_mc.json").read_text())
    assert len(cloze["instances"]) == cloze["metrics"]["instances"] > 0
    for name in ("results/train/loss.png", "results/mixes/web/funnel.md",
                 "results/stats/documents-demo/domains.png"):
        assert (finished / name).stat().st_size > 0


def test_curation_meets_the_labels(finished):
    results = json.loads((finished / "results/curation/demo/label_eval.json").read_text())
    for method in ("dedup_exact", "dedup_url", "decontam", "toxic", "toxic_spans"):
        assert results[method]["recall"] == 1.0 and results[method]["precision"] == 1.0, method
    assert results["pii"]["found"] == results["pii"]["labelled"]
    assert results["dedup_minhash"]["recall"] >= 0.9 and results["lang"]["recall"] >= 0.9


def test_corpus_statistics_equal_the_injected_labels(finished):
    import pandas as pd

    from lmforge.io.storage import read_jsonl

    labels = list(read_jsonl(finished / "results/crawl/demo/labels.jsonl.gz"))
    stats = json.loads((finished / "results/stats/documents-demo/summary.json").read_text())
    for kind in ("email", "phone", "ip"):
        assert stats[f"pii_{kind}"] == sum(label["pii"].get(kind, 0) for label in labels), kind
    # Each injected exact copy is one extra document in a duplicate-text cluster.
    extra_copies = (stats["documents_in_duplicate_text_clusters"]
                    - stats["duplicate_text_clusters"])
    assert extra_copies == sum("exact_duplicate" in label["kinds"] for label in labels)
    assert stats["documents_in_duplicate_url_clusters"] - stats["duplicate_url_clusters"] == \
        sum("url_duplicate" in label["kinds"] for label in labels)
    injected = {item for label in labels for item in label["task_items"]}
    contamination = pd.read_parquet(finished / "results/stats/documents-demo/contamination.parquet")
    assert contamination["contaminated_exact"].sum() == len(injected)
    by_task = contamination.set_index("task")
    assert by_task.loc[["cloze_mc", "arith_gen"], "contaminated_documents"].sum() == sum(
        "contamination" in label["kinds"] for label in labels)
    # The cloze sentences come from the reference's held-out topics: the pages holding cloze
    # items share n-grams with reference documents (and hold none whole); no other page does.
    assert by_task.loc["reference_bpb", "contaminated_exact"] == 0
    assert 0 < by_task.loc["reference_bpb", "contaminated_documents"] <= \
        by_task.loc["cloze_mc", "contaminated_documents"]
    # A cloze item can share a 13-gram with another, injected one: n-gram finds at least these.
    assert contamination["contaminated_ngram"].sum() >= len(injected)
    # Every injected abusive sentence is counted; the English-only model also flags a few
    # German sentences, which the mixes drop as non-English.
    assert stats["toxic_sentences"] >= sum(label["toxic_sentences"] for label in labels)
    assert stats["tokenizer_tokens"] > stats["whitespace_tokens"]
    # The web mix masks PII and drops contaminated pages: its statistics must show it.
    mix = json.loads((finished / "results/stats/mix-web/summary.json").read_text())
    assert mix["pii_email"] == mix["toxic_sentences"] == 0
    assert mix["contaminated_cloze_mc_exact"] == mix["contaminated_arith_gen_ngram"] == 0
    overlap = pd.read_parquet(
        finished / "results/stats/overlap/documents-demo__mix-web/overlap.parquet")
    assert overlap.set_index("corpus").loc["documents-demo", "texts_in_other"] > 0


def test_mlflow_has_one_parent_and_a_child_per_job(finished):
    db = sqlite3.connect(finished / "results/mlflow.db")
    runs = db.execute("SELECT run_uuid, name, status FROM runs").fetchall()
    parents = [r for r in runs if r[1] == "snakemake"]
    assert len(parents) == 1 and parents[0][2] == "FINISHED"
    children = db.execute("SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND "
                          "value = ?", (parents[0][0],)).fetchall()
    assert len(children) == len(runs) - 1 >= 40
    losses = db.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss'").fetchone()[0]
    assert losses >= 8 + 3 + 4  # a loss curve per training job


def test_second_run_has_nothing_to_do_and_report_works(repo, finished):
    out = snakemake(repo, finished, "-n", "--configfile", str(repo / "fast.yaml"))
    assert "Nothing to be done" in out.stdout + out.stderr
    snakemake(repo, finished, "--configfile", str(repo / "fast.yaml"), "--report",
              str(finished / "report.html"))
    assert (finished / "report.html").stat().st_size > 100_000


def _planned_jobs(plan: str) -> list[str]:
    return [line.split()[-1].rstrip(":") for line in plan.splitlines()
            if line.startswith(("rule ", "localrule "))]


def test_adding_a_task_plans_only_its_pairs_and_the_summary(repo, finished, tmp_path):
    """A workflow task (the corpus is already cleaned against it) adds its (model, task)
    pairs and the summary; a new benchmark also cleans the corpus against it, and so plans
    decontamination and everything trained on the corpus again."""
    import collections

    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["evaluate"]["tasks"].append("arith_gen")
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(repo, finished, "-n", "--configfile", str(tmp_path / "more.yaml")).stdout
    assert collections.Counter(_planned_jobs(plan)) == {
        "evaluate": len(config["evaluate"]["models"]), "eval_summary": 1, "all": 1}
    assert "results/eval/sft/arith_gen.json" in plan
    (tmp_path / "piqa.jsonl").write_text("".join(
        json.dumps({"goal": f"goal {i}", "sol1": "yes", "sol2": "no", "label": i % 2}) + "\n"
        for i in range(4)))
    config["evaluate"]["extra_tasks"] = {"piqa_toy": {"kind": "choice", "format": "piqa",
                                                      "path": str(tmp_path / "piqa.jsonl")}}
    config["evaluate"]["tasks"].append("piqa_toy")
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(repo, finished, "-n", "--configfile", str(tmp_path / "more.yaml")).stdout
    jobs = collections.Counter(_planned_jobs(plan))
    assert jobs["decontam"] == 2 and jobs["pretrain"] == 1
    assert "results/eval/sft/piqa_toy.json" in plan


def test_one_artifact_rebuilds_alone_and_code_change_reruns_its_stage(repo, finished):
    (finished / "results/mixes/web/funnel.md").unlink()
    out = snakemake(repo, finished, "results/mixes/web/funnel.md", "--configfile",
                    str(repo / "fast.yaml"))
    assert "1 of 1 steps (100%) done" in out.stderr
    # Snakemake compares checksums as well as times: an edit, not a touch, is a change.
    stage = repo / "src/lmforge/stats/analyses.py"
    original = stage.read_bytes()
    try:
        stage.write_bytes(original + b"\n# an edit to the stats stage\n")
        plan = snakemake(repo, finished, "-n", "--configfile", str(repo / "fast.yaml")).stdout
    finally:
        stage.write_bytes(original)  # the other tests share this copy
    # the evaluation summary reads the mix's contamination table
    assert set(_planned_jobs(plan)) == {"stats_measure", "stats", "overlap", "eval_summary",
                                        "all"}


def test_corpus_and_tokens_are_byte_identical_across_runs(repo, tmp_path, request):
    snakemake(repo, tmp_path, "results/tokens/web/meta.json", "--configfile",
              str(repo / "fast.yaml"))
    again = corpus_digests(tmp_path)
    # Asked for only now, so that this run fills the wait for the finished DAG.
    finished = request.getfixturevalue("finished")
    assert len(again) > 20 and again == {k: v for k, v in corpus_digests(finished).items()
                                         if k in again}


def test_real_warc_files_feed_the_same_dag(repo, tmp_path, shared_data):
    shared = shared_data / "warc"
    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["crawl"].update(source="warc", name="cc",
                           warc_paths=[str(shared / "warc__sample-000*.warc.gz")])
    (tmp_path / "cc.yaml").write_text(yaml.safe_dump(config))
    snakemake(repo, tmp_path, "results/mixes/web/funnel.json", "--configfile",
              str(tmp_path / "cc.yaml"))
    funnel = json.loads((tmp_path / "results/mixes/web/funnel.json").read_text())
    assert funnel["documents_in"] == 37  # the wget captures' HTML responses
    assert 0 < funnel["documents_out"] <= 37
    assert not (tmp_path / "results/crawl").exists()  # no demo crawl was made


def test_mid_training_runs_differ_by_data_order_and_the_soup_is_their_average(finished):
    import torch

    from lmforge.model.checkpoint import load_model

    runs = [load_model(finished / f"results/checkpoints/anneal-midtrain-s{s}") for s in (1, 2)]
    soup = load_model(finished / "results/checkpoints/soup-midtrain")
    weights = [dict(r.named_parameters()) for r in runs]
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights[0][name], weights[1][name])  # other data orders
    for key, value in soup.named_parameters():
        assert torch.allclose(value, (weights[0][key] + weights[1][key]) / 2, atol=1e-7), key
    lr = [float(row["lr"]) for row in _metrics(finished, "anneal-midtrain-s1")]
    assert lr[-1] < lr[0] / 10  # the learning rate anneals towards 0
    report = (finished / "results/eval/midtrain.md").read_text()
    assert "| heldout_ppl (perplexity, lower is better" in report and "anneal-web-s1" in report


def _metrics(finished, stage):
    with open(finished / f"results/train/{stage}/metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_baseline_trains_the_grown_size_on_the_staged_runs_instances(finished):
    """Same tokens as pretrain + grow and the same held-out set, scored per FLOP by the
    DAG's growth report."""
    small, grown, baseline = (_metrics(finished, s) for s in ("pretrain", "grow", "baseline"))
    assert int(baseline[-1]["tokens"]) == int(small[-1]["tokens"]) + int(grown[-1]["tokens"])
    flops_per_token = {name: float(rows[-1]["flops"]) / int(rows[-1]["tokens"])
                       for name, rows in (("small", small), ("grown", grown),
                                          ("baseline", baseline))}
    assert flops_per_token["grown"] == flops_per_token["baseline"] > flops_per_token["small"]
    assert all(row["valid_loss"] for row in (small[-1], grown[-1], baseline[-1]))
    report = json.loads((finished / "results/train/growth.json").read_text())
    assert report["target_loss"] == pytest.approx(float(baseline[-1]["valid_loss"]))
    assert report["runs"]["staged"]["flops"] < report["runs"]["baseline"]["flops"]
    assert "| staged run (both) |" in (finished / "results/train/growth.md").read_text()
    assert (finished / "results/train/growth.png").stat().st_size > 0



def test_post_training_chain_sft_dpo_rlvr(finished):
    """Each stage starts from the one before; DPO logs rewards and held-out pair accuracy,
    RLVR its verifiable rewards, and the report compares the three on held-out prompts."""
    dpo, rlvr = _metrics(finished, "dpo"), _metrics(finished, "rlvr")
    assert {"reward_accuracy", "reward_margin", "valid_reward_accuracy"} <= set(dpo[-1])
    # 20 steps here: the held-out margin is positive (accuracy > 0.5 is shown at full length
    # in the demo and on a learnable preference in tests/test_posttrain.py).
    assert float(dpo[-1]["valid_reward_margin"]) > 0
    assert {"reward", "accuracy", "kl", "unterminated", "valid_accuracy"} <= set(rlvr[-1])
    states = {stage: json.loads((finished / f"results/checkpoints/{stage}/trainer_state.json")
                                .read_text()) for stage in ("dpo", "rlvr")}
    assert states["dpo"]["config"]["loss_type"] == "dpo_norm"
    report = json.loads((finished / "results/eval/posttrain.json").read_text())
    assert set(report["accuracy"]) == {"all", "arithmetic", "ifeval"}
    assert set(report["accuracy"]["all"]) == {"sft", "dpo", "rlvr"}
    assert report["accuracy"]["all"]["sft"]["n"] == 40
    assert report["preference"]["dpo"]["reward_accuracy"] == pytest.approx(
        float(dpo[-1]["valid_reward_accuracy"]), abs=1e-6)
    assert "vs sft" in (finished / "results/eval/posttrain.md").read_text()


def test_promptability_compares_held_out_tasks_with_and_without(finished):
    report = json.loads((finished / "results/eval/promptability.json").read_text())
    for setting in ("zero_shot", "prompt_tuning"):
        assert set(report[setting]) == {"larger", "contains_word", "starts_with"}
        for rows in report[setting].values():
            assert set(rows) == {"grow", "promptable"} and rows["grow"]["n"] == 20
            assert "difference_interval" in rows["promptable"]
    assert (finished / "results/checkpoints/promptable/soft_prompt.safetensors").is_file()


def test_vision_branch_pretrains_on_captions_fine_tunes_and_reports(finished):
    import torch

    from lmforge.model.checkpoint import load_model
    from lmforge.vision.molmo import Molmo, load_vlm

    vlm = load_vlm(finished / "results/checkpoints/vlm-finetune")
    assert isinstance(vlm, Molmo) and vlm.cfg.max_seq_len == 192
    caption = load_vlm(finished / "results/checkpoints/vlm-caption")
    assert not torch.equal(vlm.vit.patch_embed.weight, caption.vit.patch_embed.weight)
    assert isinstance(load_model(finished / "results/checkpoints/vlm-text_only"),
                      type(vlm.decoder))
    state = json.loads((finished / "results/checkpoints/vlm-finetune/trainer_state.json")
                       .read_text())
    assert state["steps"] == 6
    report = json.loads((finished / "results/eval/vision.json").read_text())
    assert set(report["metrics"]) == {"pixmo_cap", "pixmo_points", "pixmo_count", "vqa"}
    for kind, metrics in report["metrics"].items():
        for rows in metrics.values():
            assert rows["vlm"]["n"] == 12 and "difference_interval" in rows["vlm"]
            assert ("random" in rows) == (kind != "pixmo_cap")
    md = (finished / "results/eval/vision.md").read_text()
    assert "| pointing | accuracy | 12 |" in md and "| captions | cider |" in md
    assert (finished / "results/eval/vision_points.png").stat().st_size > 10_000
    db = sqlite3.connect(finished / "results/mlflow.db")
    keys = {k for (k,) in db.execute("SELECT DISTINCT key FROM metrics")}
    assert {"pixmo_points.accuracy.vlm", "pixmo_count.accuracy.random",
            "mixture.pixmo_points"} <= keys

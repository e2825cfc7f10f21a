"""The Hub in the workflow, through the loopback Hub (tests/fakehub.py) that every job's real
`huggingface_hub` client reaches by `HF_ENDPOINT`: a released corpus and a pinned model as
inputs, and the tiny run's SFT checkpoint published with its card."""

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lmforge.io.storage import read_jsonl
from workflow_helpers import snakemake

from conftest import tiny_olmo2

pytestmark = pytest.mark.workflow


def hub_model_files(folder: Path) -> dict[str, bytes]:
    """A tiny OLMo 2 exported with a tokenizer trained here: what a Hub model repo holds."""
    texts = [f"The answer to question {i} is {i % 7}." for i in range(200)]
    tiny_olmo2(folder, texts, vocab_size=300, max_seq_len=64)
    return {p.name: p.read_bytes() for p in (folder / "hf").iterdir()}


def test_a_hub_corpus_and_a_hub_model_enter_the_workflow(repo, fake_hub, tmp_path):
    docs = [{"id": f"hub-{i}", "text": f"Hub document {i}.", "source": "hub",
             "metadata": {"url": f"https://hub.example/{i % 4}"}} for i in range(8)]
    table = io.BytesIO()
    pq.write_table(pa.table({"text": ["Parquet text.", "More text."], "id": ["p0", "p1"],
                             "url": ["https://hub.example/0", "https://other.example/"]}), table)
    corpus_commit = fake_hub.add("org/corpus", {
        "data/a.jsonl": "".join(json.dumps(d) + "\n" for d in docs).encode(),
        "data/b.parquet": table.getvalue(), "README.md": b"# a corpus\n"}, kind="dataset")
    model_commit = fake_hub.add("org/tiny", hub_model_files(tmp_path))
    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["crawl"].update(source="documents", name="hubcorpus",
                           document_paths=["hf://datasets/org/corpus@main/data/*"])
    config["evaluate"]["hub_models"] = {"tinyhub": f"hf:org/tiny@{model_commit}"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    dedup = "results/attributes/dedup_url/hubcorpus/shard-0001.jsonl.gz"
    snakemake(repo, work, dedup, "results/eval/tinyhub/cloze_mc.json",
              "--configfile", str(tmp_path / "config.yaml"))
    # Each file of the pinned dataset commit is a shard, in order: a.jsonl, then b.parquet.
    local = work / "results/hub/datasets/shard-0000/a.jsonl"
    assert local.read_bytes() == fake_hub.files("org/corpus", corpus_commit, "dataset")[
        "data/a.jsonl"]
    imported = list(read_jsonl(work / "results/documents/hubcorpus/shard-0001.jsonl.gz"))
    assert [d["id"] for d in imported] == ["p0", "p1"]
    flags = [bool(r["attributes"]) for r in read_jsonl(work / dedup)]
    assert flags == [True, False]  # hub.example/0 came first in a.jsonl
    record = json.loads((work / "results/hub/models/tinyhub.json").read_text())
    assert record["commit"] == model_commit
    result = json.loads((work / "results/eval/tinyhub/cloze_mc.json").read_text())
    assert result["hub"]["commit"] == model_commit and result["metrics"]["instances"] > 0
    # Token perplexity is not a Hub model's task; an unknown name is no target at all.
    proc = snakemake(repo, work, "results/eval/tinyhub/heldout_ppl.json", "-n",
                     "--configfile", str(tmp_path / "config.yaml"), check=False)
    assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr


def test_the_tiny_runs_sft_is_published_with_its_card(finished, repo, fake_hub, tmp_path):
    # A copy of the run's MLflow store: the card's lineage comes from it, and the finished
    # run's own store keeps its one invocation for the other tests.
    store = tmp_path / "mlflow.db"
    shutil.copy(finished / "results/mlflow.db", store)
    mlflow_cfg = {**yaml.safe_load((repo / "fast.yaml").read_text())["mlflow"],
                  "tracking_uri": f"sqlite:///{store}"}
    (tmp_path / "publish.yaml").write_text(yaml.safe_dump(
        {"publish": {"repo": "org/lmforge-tiny", "revision": "v1"}, "mlflow": mlflow_cfg}))
    snakemake(repo, finished, "results/publish/sft.json", "--configfile",
              str(repo / "fast.yaml"), str(tmp_path / "publish.yaml"))
    record = json.loads((finished / "results/publish/sft.json").read_text())
    uploaded = fake_hub.files("org/lmforge-tiny", "v1")
    assert record["commit"] == fake_hub.repos[("model", "org/lmforge-tiny")].refs["v1"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= set(uploaded)
    card = uploaded["README.md"].decode()
    tokens = 0
    for stage in ("pretrain", "grow", "sft"):
        with open(finished / f"results/train/{stage}/metrics.csv", newline="") as f:
            tokens += int(float(list(csv.DictReader(f))[-1]["tokens"]))
    assert f"tokens seen: {tokens:,}" in card
    for section in ("## Data: the mix and its funnel", "## Evaluation", "| sft |"):
        assert section in card
    # The lineage, from the SFT run down to the job that wrote the WARC files.
    assert "<- sft (run" in card and "<- crawl_demo (run" in card
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`hub.repo` = 'org/lmforge-tiny'",
                              order_by=["attributes.start_time DESC"])
    assert runs[0].data.tags["hub.commit"] == record["commit"]
    # Without a repo there is nothing to publish to: a clear error before any job.
    proc = snakemake(repo, finished, "results/publish/grow.json", "-n", "--configfile",
                     str(repo / "fast.yaml"), check=False)
    assert proc.returncode != 0 and "set publish.repo" in proc.stdout + proc.stderr


def test_training_starts_from_a_hub_model_with_its_tokenizer(finished, repo, fake_hub, tmp_path):
    """`start_from` on the finished tiny run (a copy): the Hub model's tokenizer replaces the
    trained one, so the mix is tokenized again; its weights, imported unchanged, are what
    pretraining continues and SFT (`sft.from: init`) fine-tunes; nothing upstream reruns."""
    hub_files = hub_model_files(tmp_path)
    commit = fake_hub.add("org/tiny", hub_files)
    work = tmp_path / "work"
    shutil.copytree(finished, work, symlinks=True)  # copy2 keeps the times Snakemake compares
    short = {"steps": 4, "log_every": 2, "warmup_steps": 1}
    # Pretraining keeps its global batch: grow.continue_schedule requires grow's to equal it.
    (tmp_path / "start.yaml").write_text(yaml.safe_dump({
        "start_from": f"hf:org/tiny@{commit}",
        "sft": {"from": "init",
                "train": {**short, "micro_batch_size": 4, "global_batch_size": 4}},
        "pretrain": {**short, "eval_every": 2, "eval_instances": 4, "checkpoint_every": 0}}))
    targets = ("results/checkpoints/pretrain", "results/checkpoints/sft")
    options = ("--configfile", str(repo / "fast.yaml"), str(tmp_path / "start.yaml"))
    plan = snakemake(repo, work, *targets, "-n", *options).stdout
    assert set(re.findall(r"^(?:local)?rule (\w+):", plan, re.M)) == {
        "fetch_hub_model", "hub_tokenizer", "import_hub_model", "tokenize", "index_tokens",
        "pretrain", "sft"}
    snakemake(repo, work, *targets, *options)
    assert (work / "results/tokenizer/web/tokenizer.json").read_bytes() == hub_files[
        "tokenizer.json"]  # it has lmforge's special tokens already: taken as it is
    assert json.loads((work / "results/tokens/web/meta.json").read_text())["vocab_size"] == 300
    from safetensors.torch import load_file

    from lmforge.io.lineage import lineage_of, render
    from lmforge.model.checkpoint import load_model
    from lmforge.model.hf import import_hf

    record = json.loads((work / "results/hub/models/start.json").read_text())
    assert record["commit"] == commit
    hub_state = import_hf(record["path"]).state_dict()
    for name, tensor in load_file(work / "results/checkpoints/init/model.safetensors").items():
        assert torch.equal(tensor, hub_state[name]), name
    for stage in ("pretrain", "sft"):
        trained = load_model(work / f"results/checkpoints/{stage}")
        assert trained.cfg == import_hf(record["path"]).cfg
        assert not torch.equal(trained.state_dict()["lm_head.weight"], hub_state["lm_head.weight"])
    tree, _ = lineage_of(work / "results/checkpoints/sft/model.safetensors",
                         f"sqlite:///{work / 'results/mlflow.db'}")
    lineage = "\n".join(render(tree))
    assert "<- import_hub_model/init (run" in lineage and "<- fetch_hub_model/start" in lineage

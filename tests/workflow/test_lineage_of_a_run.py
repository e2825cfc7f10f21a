"""`lmforge lineage`: from one evaluation score back to the crawl's WARC files, in the finished
tiny run's MLflow store."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow


def lineage(finished: Path, artifact: str, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{finished / 'results/mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "lmforge.cli", "lineage", artifact, *options],
                          cwd=finished, env=env, capture_output=True, text=True)


def nodes(tree: dict):
    yield tree
    for child in tree.get("inputs", []):
        yield from nodes(child)


def test_an_evaluation_score_leads_back_to_the_warc_files(finished):
    proc = lineage(finished, "results/eval/sft/heldout_ppl.json", "--json")
    assert proc.returncode == 0, proc.stderr
    tree = json.loads(proc.stdout)
    assert tree["run"]["name"] == "evaluate/sft/heldout_ppl"
    names = {node["run"]["name"] for node in nodes(tree) if "run" in node}
    for step in ("sft", "pretrain", "tokenize/web", "tokenize/web/shard-0001", "train_tokenizer",
                 "dedup_minhash/shard-0000",
                 "minhash/clusters", "minhash/bucket-0000", "minhash/shard-0001",
                 "dedup/shard-0000", "dedup/bucket-0000", "dedup/keys/shard-0001",
                 "decontam/shard-0000.jsonl.gz", "tag/quality/shard-0000.jsonl.gz",
                 "extract/shard-0000.jsonl.gz", "crawl_demo"):
        assert step in names, step
    assert any(name.startswith("mix/web/") for name in names)
    warcs = {node["path"]: node["sha256"] for node in nodes(tree)
             if node["path"].endswith(".warc.gz")}
    on_disk = sorted((finished / "results/crawl/demo").glob("*.warc.gz"))
    assert sorted(warcs) == [str(p) for p in on_disk]
    for path, sha in warcs.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
    # Every recorded file still has the content its run recorded.
    for node in nodes(tree):
        if Path(node["path"]).is_file():
            assert hashlib.sha256(Path(node["path"]).read_bytes()).hexdigest() == node["sha256"]
    # Every run carries the commit and config hash of its invocation.
    assert all(node["run"]["git_commit"] and node["run"]["config_hash"] != "unknown"
               for node in nodes(tree) if "run" in node)


def test_lineage_prints_a_tree_and_refuses_a_changed_file(finished, tmp_path):
    proc = lineage(finished, "results/mixes/web/funnel.json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("results/mixes/web/funnel.json  sha256:")
    assert "<- funnel/web" in lines[0]
    assert any("[source]" in line or "<- crawl_demo" in line for line in lines)
    changed = tmp_path / "funnel.json"
    changed.write_text("{}")
    proc = lineage(finished, str(changed))
    assert proc.returncode == 1 and "no tracked run wrote" in proc.stderr

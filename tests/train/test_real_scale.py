"""The published-scale configs: they validate, print a plan that fits, and dry-run on SLURM.

The dry run plans every job of the real DAG through `--profile profiles/slurm`. Snakemake checks
that each remote WARC exists, so Common Crawl's host is replaced by a loopback server holding
a slice of the manifest's layout (16 files); everything else is the config as shipped.
"""

import contextlib
import functools
import http.server
import io
import shutil
import threading

import pytest
import yaml

from lmforge.cli import main as cli
from workflow_helpers import ROOT, snakemake

CONFIGS = {"olmo2-1b": {"params": "1.48 B", "nodes": 4},
           "olmo2-7b": {"params": "7.30 B", "nodes": 32}}
WARCS = 4
pytestmark = pytest.mark.workflow


def plan(*args: str) -> tuple[int, str, str]:
    """`lmforge plan ARGS`: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli(["plan", *args])
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", CONFIGS)
def test_plan_prints_every_stage_and_checks_it_fits(name):
    status, stdout, stderr = plan("--configfile", str(ROOT / "config" / f"{name}.yaml"))
    assert status == 0, stderr
    rows = {line.split("|")[1].strip(): line for line in stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"stage", "pretrain", "grow", "baseline", "sft", "anneal", "dpo", "rlvr"}
    assert CONFIGS[name]["params"] in rows["pretrain"]
    assert f"| {CONFIGS[name]['nodes']} × 8 |" in rows["pretrain"]
    for stage in ("pretrain", "grow", "baseline", "sft", "anneal"):
        assert f"{stage}: fits a" in stdout


def test_plan_refuses_a_stage_that_cannot_fit(tmp_path):
    over = tmp_path / "big.yaml"
    over.write_text(yaml.safe_dump({"pretrain": {"micro_batch_size": 16, "global_batch_size": 512},
                                    "launch": {"pretrain": {"nodes": 4, "processes_per_node": 8,
                                                            "gpus_per_node": 8}}}))
    status, _, stderr = plan("--configfile", str(ROOT / "config" / "olmo2-1b.yaml"), str(over))
    assert status == 2
    assert "pretrain: the run needs about" in stderr and "80.0 GiB" in stderr


@pytest.fixture(scope="module")
def crawl_mirror(tmp_path_factory, demo_crawl):
    """A loopback HTTP server with WARC files at Common Crawl's path layout, and a manifest."""
    root = tmp_path_factory.mktemp("mirror")
    entries = [f"crawl-data/CC-MAIN-2024-10/segments/test/warc/part-{i:05d}.warc.gz"
               for i in range(WARCS)]
    for entry in entries:
        (root / entry).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_crawl / "crawl" / "shard-0000.warc.gz", root / entry)
    manifest = root / "warc.paths"
    manifest.write_text("\n".join(entries) + "\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", manifest
    server.shutdown()


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_on_the_slurm_profile_plans_the_whole_dag(name, repo, crawl_mirror, tmp_path):
    base_url, manifest = crawl_mirror
    mirror = tmp_path / "mirror.yaml"
    mirror.write_text(yaml.safe_dump({"crawl": {"warc_manifest": str(manifest),
                                                "warc_base_url": base_url}}))
    out = snakemake(repo, tmp_path, "-n", "--configfile", str(repo / "config" / f"{name}.yaml"),
                    str(mirror), "--profile", str(repo / "profiles" / "slurm"), "-p").stdout
    assert "This was a dry-run" in out
    counts = {}
    for line in out[out.index("Job stats:"):].splitlines()[3:]:
        if not line.strip():
            break
        job, count = line.split()
        counts[job] = int(count)
    # One job per WARC file, and per bucket of dedup keys and MinHash band digests.
    assert counts["extract"] == counts["minhash"] == counts["dedup_keys"] == WARCS
    assert counts["dedup"] == counts["dedup_minhash"] == WARCS
    assert counts["dedup_bucket"] == counts["minhash_bucket"] == 256
    assert counts["minhash_clusters"] == 1  # near-duplicate clusters across all shards
    assert counts["pretrain"] == counts["grow"] == counts["sft"] == 1
    pretrain = out[out.index("rule pretrain:"):]
    resources = pretrain[pretrain.index("resources:"):].splitlines()[0]
    nodes = CONFIGS[name]["nodes"]
    for resource in (f"nodes={nodes}", f"processes={nodes * 8}", "gres=gpu:8", "mpi=srun",
                     "tasks_per_node=8", "slurm_partition=gpu"):
        assert resource in resources, resources
    assert f"lmforge launch --nodes {nodes} --processes {nodes * 8} -- lmforge pretrain" in \
        pretrain


def test_plan_prints_the_staged_training_schedule():
    status, stdout, stderr = plan("--configfile", str(ROOT / "config" / "olmo2-1b.yaml"),
                                  "--target-loss", "2.6")
    assert status == 0, stderr
    staged = stdout[stdout.index("Staged training"):]
    assert "| 1 | 1.07 B |" in staged and "| 2 | 2.15 B |" in staged  # 16 → 32 layers
    saved = float(staged.split("% saved")[0].rsplit(" ", 1)[1])
    assert 5 < saved < 40

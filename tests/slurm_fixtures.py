"""The SLURM cluster on localhost and the workflow run through `--profile profiles/slurm` (a
pytest plugin of tests/conftest.py: session fixtures that the session starts early).

The cluster (slurmctld, slurmd, slurmdbd + MariaDB for sacct, munge) is installed from Debian's
packages and started by tests/slurm/localhost_cluster.sh, and stopped with the session. It needs
root, as in CI; elsewhere its tests are skipped, unless LMFORGE_REQUIRE_SLURM=1 (set by .ci/run)
makes that a failure.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, BackgroundSnakemake

CLUSTER = ROOT / "tests" / "slurm" / "localhost_cluster.sh"
# Per-shard jobs (extract of both shards, a tag of one) and the sharded dedup, its keys in two
# buckets (the local run has one: the decisions must not change).
DATA_TARGETS = ["results/attributes/lang/demo/shard-0000.jsonl.gz",
                *(f"results/attributes/{method}/demo/shard-0000.jsonl.gz"
                  for method in ("dedup_exact", "dedup_url", "dedup_para"))]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        if os.environ.get("LMFORGE_REQUIRE_SLURM") == "1":
            pytest.fail("LMFORGE_REQUIRE_SLURM=1 but a SLURM cluster needs root to start")
        pytest.skip("starting a SLURM cluster on localhost needs root")
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["timeout", "-k", "5", "300", "bash", str(CLUSTER), "start",
                            str(state)], capture_output=True, text=True)
    assert start.returncode == 0, f"cluster did not start:\n{start.stdout}\n{start.stderr}"
    yield state
    subprocess.run(["timeout", "-k", "5", "60", "bash", str(CLUSTER), "stop", str(state)],
                   capture_output=True)


def slurm_config(repo: Path, folder: Path, processes: int, partitions: int = 1,
                 pretrain_steps: int | None = None) -> Path:
    """The session's shortened config, pretraining on `processes` processes with the same global
    batch (16 instances per step) and dedup keys in `partitions` buckets. `pretrain_steps` stops
    pretraining early on the same learning-rate schedule: the schedule spans pretraining and
    growth (grow.continue_schedule), so growth takes the steps pretraining gives up."""
    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["curate"]["dedup"]["partitions"] = partitions
    config["launch"]["pretrain"]["processes_per_node"] = processes
    config["pretrain"]["micro_batch_size"] = config["pretrain"]["global_batch_size"] // processes
    if pretrain_steps:
        assert config["grow"]["continue_schedule"]
        config["grow"]["train"]["steps"] += config["pretrain"]["steps"] - pretrain_steps
        config["pretrain"]["steps"] = pretrain_steps
    path = folder / f"slurm-{processes}-{partitions}-{pretrain_steps or 'all'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def slurm_options(repo: Path, config: Path) -> list[str]:
    """`--profile profiles/slurm`, checking job states every 2 s (not 20)."""
    return ["--configfile", str(config), "--profile", str(repo / "profiles" / "slurm"),
            "--jobs", "4", "--slurm-init-seconds-before-status-checks", "2"]


@pytest.fixture(scope="session")
def slurm_data_run(slurm_cluster, repo, tmp_path_factory) -> BackgroundSnakemake:
    """DATA_TARGETS through SLURM, dedup keys in two buckets; it builds in the background from
    the start of the session."""
    config = slurm_config(repo, tmp_path_factory.mktemp("slurm-config"), 1, partitions=2)
    run = BackgroundSnakemake(repo, tmp_path_factory.mktemp("slurm-data"), *DATA_TARGETS,
                              *slurm_options(repo, config))
    yield run
    run.stop()

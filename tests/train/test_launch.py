"""How a training command is started: SLURM geometry, rank variables, torchrun, batch sizes."""

import os
import subprocess
import sys

import pytest

from lmforge.io.storage import InputError
from lmforge.train.config import resolve_batch
from lmforge.train.launch import LaunchError, expand_nodelist, job_resources, plan, rendezvous_env

SELF = ["python", "-m", "lmforge.cli", "launch"]
CMD = ["lmforge", "pretrain", "--out", "x"]


def test_resources_describe_the_job_the_slurm_plugin_submits():
    assert job_resources(1, 1, 0) == {"nodes": 1, "processes": 1}
    assert job_resources(1, 2, 0) == {"nodes": 1, "processes": 2, "mpi": "srun",
                                      "tasks_per_node": 2}
    assert job_resources(4, 8, 8) == {"nodes": 4, "processes": 32, "gres": "gpu:8",
                                      "tasks_per_gpu": 1, "mpi": "srun", "tasks_per_node": 8}
    # One process per node: the plugin wants `tasks` (its tasks_per_node must exceed 1).
    assert job_resources(2, 1, 1)["tasks"] == 2
    with pytest.raises(ValueError, match="one process per GPU"):
        job_resources(1, 4, 8)


def test_outside_slurm_one_process_runs_as_is_and_more_under_torchrun():
    assert plan(CMD, 1, {}, SELF) == (CMD, {})
    argv, env = plan(CMD, 2, {}, SELF)
    assert argv[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node=2"]
    assert argv[5:] == ["-m", "lmforge.cli", "pretrain", "--out", "x"] and env == {}
    with pytest.raises(LaunchError, match="need a SLURM allocation"):
        plan(CMD, 16, {}, SELF, nodes=2)
    with pytest.raises(LaunchError, match="nothing to launch"):
        plan([], 1, {}, SELF)


def test_a_batch_script_starts_one_srun_task_per_process():
    environ = {"SLURM_JOB_ID": "77"}  # the plugin strips the allocation's task variables
    argv, env = plan(CMD, 16, environ, SELF, nodes=2, cpus_per_task=8)
    assert argv[:7] == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "--nodes=2",
                        "--ntasks=16", "--ntasks-per-node=8", "--cpus-per-task=8"]
    assert argv[7:] == SELF + ["--processes=16", "--nodes=2", "--"] + CMD and env == {}


def test_each_srun_task_becomes_one_rank_with_a_shared_rendezvous():
    step = {"SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "0", "SLURM_PROCID": "9",
            "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_NUM_TASKS": "16",
            "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}
    argv, env = plan(CMD, 16, step, SELF, nodes=2)
    assert argv == CMD
    assert env == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 1234), "NODE_RANK": "1"}
    with pytest.raises(LaunchError, match="overridden inconsistently"):
        plan(CMD, 8, step, SELF)
    with pytest.raises(LaunchError, match="not inside an srun task"):
        rendezvous_env({"SLURM_JOB_ID": "1"})


def test_node_lists_expand_like_scontrol(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)  # parse here, without the client
    assert expand_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07",
                                                       "login1"]
    assert expand_nodelist("node9") == ["node9"]


def test_global_batch_size_sets_accumulation_for_the_world_size(config):
    cfg = {**{k: v for k, v in config["pretrain"].items() if k != "grad_accum"},
           "micro_batch_size": 4, "global_batch_size": 512}
    assert resolve_batch(cfg, 32).grad_accum == 4
    assert resolve_batch(cfg, 128).grad_accum == 1
    with pytest.raises(ValueError, match="not a multiple"):
        resolve_batch(cfg, 256)
    with pytest.raises(ValueError, match="contradicts"):
        resolve_batch({**cfg, "grad_accum": 2}, 32)
    fixed = {k: v for k, v in cfg.items() if k != "global_batch_size"}
    assert resolve_batch({**fixed, "micro_batch_size": 2, "grad_accum": 3}, 8).grad_accum == 3
    with pytest.raises(InputError, match="grad_accum or global_batch_size"):
        resolve_batch(fixed, 8)
    with pytest.raises(InputError, match=r"train: unknown key\(s\) \['steps_total'\]"):
        resolve_batch({**cfg, "steps_total": 3}, 8)


def test_two_local_processes_run_under_torchrun_with_their_ranks(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text("import os, pathlib\n"
                      "pathlib.Path(__file__).with_name(f\"rank-{os.environ['RANK']}\")"
                      ".write_text(os.environ['WORLD_SIZE'] + ' ' + os.environ['MASTER_ADDR'])\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_", "LOCAL_RANK"))}
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "launch", "--processes", "2",
                           "--", str(script)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("rank-*")) == ["rank-0", "rank-1"]
    assert (tmp_path / "rank-1").read_text().startswith("2 ")

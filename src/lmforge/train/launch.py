"""Start a (multi-process, multi-node) training command the way its environment asks.

`lmforge launch [--processes N] -- lmforge pretrain ...` is what the training rules run:

- in a SLURM batch script (the executor plugin's `mpi` jobs: the rule's resources set nodes and
  tasks per node), it runs `srun` over the allocation's tasks, one process per GPU;
- in one of those `srun` tasks it describes the process group from SLURM's variables
  (rank = SLURM_PROCID, local rank = SLURM_LOCALID, world = SLURM_NTASKS, rendezvous at the first
  node of SLURM_JOB_NODELIST on a port derived from the job id) and runs the command;
- outside SLURM it runs `torchrun --standalone` for N > 1 local processes, else the command
  itself.

torch.distributed's env:// rendezvous then reads those variables in every process, which is what
DeepSpeed's `init_distributed` uses.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

from lmforge.io.storage import InputError
from lmforge.runner import arg, command

# Below the ephemeral range; jobs sharing a node get different ports from their job ids.
PORT_BASE, PORT_SPAN = 20000, 10000


class LaunchError(InputError):
    pass


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM node list (`gpu[01-03,07],login1`), by `scontrol` when present.

    Parsed here too, so a process without the SLURM client (a container) can still find its
    rendezvous host."""
    if shutil.which("scontrol"):
        proc = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                              text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()
    hosts, depth, token = [], 0, ""
    for char in nodelist + ",":
        if char == "," and depth == 0:
            hosts += _expand_one(token) if token else []
            token = ""
            continue
        depth += char == "["
        depth -= char == "]"
        token += char
    return hosts


def _expand_one(item: str) -> list[str]:
    if "[" not in item:
        return [item]
    prefix, ranges = item[: item.index("[")], item[item.index("[") + 1 : item.rindex("]")]
    suffix = item[item.rindex("]") + 1 :]
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)
        for number in range(int(low), int(high or low) + 1):
            names.append(f"{prefix}{number:0{width}d}{suffix}")
    return names


def rendezvous_env(slurm: dict[str, str]) -> dict[str, str]:
    """torch.distributed's env:// variables for one `srun` task, from its SLURM variables."""
    try:
        job_id = int(slurm["SLURM_JOB_ID"])
        rank, local_rank = int(slurm["SLURM_PROCID"]), int(slurm["SLURM_LOCALID"])
        world = int(slurm.get("SLURM_STEP_NUM_TASKS") or slurm["SLURM_NTASKS"])
        nodelist = slurm.get("SLURM_STEP_NODELIST") or slurm["SLURM_JOB_NODELIST"]
    except KeyError as err:
        raise LaunchError(f"not inside an srun task: {err.args[0]} is not set") from None
    local_world = int(slurm.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0])
    return {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(local_world), "MASTER_ADDR": expand_nodelist(nodelist)[0],
            "MASTER_PORT": str(PORT_BASE + job_id % PORT_SPAN),
            "NODE_RANK": slurm.get("SLURM_NODEID", "0")}


def job_resources(nodes: int, processes_per_node: int, gpus_per_node: int,
                  gpu_memory_gib: float | None = None) -> dict:
    """Snakemake resources of a training job, in the SLURM executor plugin's terms.

    More than one process makes it an `mpi` job: the plugin then submits the task geometry
    and leaves starting the ranks to the job (this launcher's `srun`)."""
    processes = nodes * processes_per_node
    resources: dict = {"nodes": nodes, "processes": processes}
    if gpus_per_node:
        if gpus_per_node != processes_per_node:
            raise ValueError(f"one process per GPU: processes_per_node {processes_per_node} "
                             f"!= gpus_per_node {gpus_per_node}")
        resources.update(gres=f"gpu:{gpus_per_node}", tasks_per_gpu=1)
    if processes > 1:
        resources["mpi"] = "srun"
        if processes_per_node > 1:
            resources["tasks_per_node"] = processes_per_node
        else:
            resources["tasks"] = nodes
    return resources


def plan(command: list[str], processes: int, environ: dict[str, str],
         self_command: list[str], nodes: int = 1, cpus_per_task: int | None = None
         ) -> tuple[list[str], dict[str, str]]:
    """The command line to execute here, and the variables to add to its environment."""
    if not command:
        raise LaunchError("nothing to launch: give the command after --")
    if processes < 1 or nodes < 1 or processes % nodes:
        raise LaunchError(f"{processes} processes do not spread evenly over {nodes} nodes")
    if "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ:
        # One task of a job step: this process is one rank.
        tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
        if tasks != processes:
            raise LaunchError(f"the job asked for {processes} processes but its step has "
                              f"{tasks} tasks: its resources were overridden inconsistently")
        return command, rendezvous_env(environ)
    if "SLURM_JOB_ID" in environ:
        # The batch script of an allocation (the plugin's `mpi` jobs). The plugin strips the
        # allocation's SLURM_* task variables before running the rule, so the geometry is
        # given to srun explicitly; srun refuses it if the allocation is smaller.
        srun = ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", f"--nodes={nodes}",
                f"--ntasks={processes}", f"--ntasks-per-node={processes // nodes}"]
        if cpus_per_task:
            srun.append(f"--cpus-per-task={cpus_per_task}")
        return srun + self_command + [f"--processes={processes}", f"--nodes={nodes}", "--"] \
            + command, {}
    if nodes > 1:
        raise LaunchError(f"{nodes} nodes need a SLURM allocation: run the workflow with "
                          "--profile profiles/slurm")
    if processes == 1:
        return command, {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={processes}"]
    if command[0] == "lmforge":  # torchrun starts Python files or modules, not scripts
        command = ["-m", "lmforge.cli"] + command[1:]
    return torchrun + command, {}


def job_cpus_per_task(job_id: str) -> int | None:
    """CPUs per task of a SLURM job, as the controller allocated them."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                          text=True)
    match = re.search(r"\bCPUs/Task=(\d+)", proc.stdout)
    return int(match.group(1)) if proc.returncode == 0 and match else None


def launch(command: list[str], processes: int = 1, nodes: int = 1) -> int:
    environ = dict(os.environ)
    in_batch = "SLURM_JOB_ID" in environ and "SLURM_STEP_ID" not in environ
    argv, extra_env = plan(command, processes, environ,
                           [sys.executable, "-m", "lmforge.cli", "launch"], nodes,
                           job_cpus_per_task(environ["SLURM_JOB_ID"]) if in_batch else None)
    env = {**os.environ, **extra_env}
    print(f"launch: {' '.join(argv)}" + (f"  (rank {extra_env['RANK']} of "
          f"{extra_env['WORLD_SIZE']}, rendezvous {extra_env['MASTER_ADDR']}:"
          f"{extra_env['MASTER_PORT']})" if "RANK" in extra_env else ""), flush=True)
    return subprocess.run(argv, env=env).returncode


@command("launch", arg("--processes", type=int, default=1), arg("--nodes", type=int, default=1),
         arg("command_line", nargs=argparse.REMAINDER), tracked=False)
def launch_command(args, job) -> int:
    """Run a training command as SLURM (srun) or torchrun would start its processes."""
    command_line = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    return launch(command_line, args.processes, args.nodes)

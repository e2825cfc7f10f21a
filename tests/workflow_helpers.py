"""Running the workflow from tests: a copy of the repository, the shortened tiny config."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lmforge.train.stages import merge_config

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTED_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
FAST = {"pretrain": {"steps": 60}, "grow": {"train": {"steps": 20}},
        "sft": {"train": {"steps": 30}},
        "instruct_data": {"preference_pairs": {"arithmetic": 200, "constraint": 60},
                          "rlvr_prompts": {"arithmetic": 100, "constraint": 40},
                          "heldout": {"arithmetic": 20, "constraint": 20}},
        "dpo": {"train": {"steps": 20}},
        "promptability": {"tasks": {"train_per_task": 100, "shot_pool": 16, "test_per_task": 20},
                          "shot_sets": 1, "tune_steps": 5, "train": {"steps": 10}},
        "rlvr": {"train": {"steps": 6, "samples_per_prompt": 4, "global_batch_size": 32,
                           "micro_batch_size": 16, "max_new_tokens": 8,
                           "eval_every": 10}},
        # arith_gen and reference_bpb run in `make demo`; here their pairs would only add jobs.
        # dpo and rlvr are compared in results/eval/posttrain.md here.
        "evaluate": {"models": ["init", "pretrain", "grow", "baseline", "sft"],
                     "max_ppl_tokens": 6000, "max_heldout_documents": 60,
                     "tasks": ["heldout_ppl", "heldout_domains", "cloze_mc"]},
        "midtrain": {"seeds": [1, 2], "tasks": ["heldout_ppl", "reference_bpb"],
                     "train": {"steps": 20}},
        "vision": {"scenes": {"train_images": 48, "eval_images": 12},
                   "caption": {"train": {"steps": 4, "micro_batch_size": 8,
                                         "global_batch_size": 8, "log_every": 2}},
                   "finetune": {"train": {"steps": 6, "micro_batch_size": 8,
                                          "global_batch_size": 8, "log_every": 2}}}}


def _command(repo: Path, work: Path, args: tuple[str, ...], cores: int,
             env: dict[str, str] | None) -> tuple[list[str], dict[str, str]]:
    # A DeepSpeed test in this process may have described a one-rank world in os.environ;
    # jobs must pick their own.
    full_env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    full_env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    full_env.update(env or {})
    return [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(work),
            "--cores", str(cores), *args], full_env


def snakemake(repo: Path, work: Path, *args: str, check: bool = True, cores: int = 2):
    """`snakemake` on the copy's Snakefile in `work`; give targets before options that take
    several values (--configfile)."""
    command, env = _command(repo, work, args, cores, None)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=2700)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


class BackgroundSnakemake:
    """`snakemake` running while other tests do; its output goes to `work`/../<name>.log."""

    def __init__(self, repo: Path, work: Path, *args: str, cores: int = 2,
                 env: dict[str, str] | None = None):
        command, full_env = _command(repo, work, args, cores, env)
        self.work, self.args = work, args
        self.log = work.with_suffix(".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         env=full_env)

    def wait(self) -> Path:
        """The working directory once the run has succeeded."""
        if self.proc.wait(timeout=2700) != 0:
            raise AssertionError(f"snakemake {' '.join(self.args)} failed:\n"
                                 f"{self.log.read_text()[-8000:]}")
        return self.work

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def copy_repo(destination: Path) -> Path:
    """The workflow's files and the shortened config (fast.yaml) under `destination`."""
    shutil.copy(ROOT / "Snakefile", destination)
    for folder in ("workflow", "config", "src", "envs", "profiles"):
        shutil.copytree(ROOT / folder, destination / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    fast = merge_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), FAST)
    (destination / "fast.yaml").write_text(yaml.safe_dump(fast))
    return destination


def corpus_digests(work: Path) -> dict[str, str]:
    """sha256 of every file of a run's corpus: documents, attributes, mixes, tokens, tokenizer."""
    files = [p for folder in ("documents", "attributes", "mixes", "tokens", "tokenizer")
             for p in sorted((work / "results" / folder).rglob("*")) if p.is_file()]
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

"""How one `lmforge` subcommand runs: its arguments, its MLflow child run, its lineage record.

A stage module declares a command with `@command(...)`: the function does the stage's work and
returns its metrics; this module parses the arguments, opens the job's child run (rank 0 only),
logs the parameters, the returned metrics and the artifacts, and records the content hashes of
the paths the command reads and writes (see lmforge.io.lineage). Stage code never touches MLflow
except through the `job` it is given (for per-step metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.io.storage import InputError, document_files

log = logging.getLogger("lmforge")

# Arguments that name documents: a mix directory stands for its part files.
DOCUMENT_ARGUMENTS = ("docs", "mixes")


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def arg(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    """An argparse argument; options are required unless they have a default or say so."""
    if flags[0].startswith("--") and "default" not in kwargs and kwargs.get("nargs") != "*":
        kwargs.setdefault("required", True)
    return flags, kwargs


CFG = arg("--cfg", type=json_object)
SEED = arg("--seed", type=int)
OUT = arg("--out")
OUTS = arg("--out", nargs="+")
OUT_DIR = arg("--out-dir")
DOCS = arg("--docs", nargs="+")
METRICS = arg("--metrics")
TOKENS_DIR = arg("--tokens-dir")
TOKENIZER = arg("--tokenizer")
CHECKPOINT = arg("--checkpoint")
VALID_FRACTION = arg("--valid-fraction", type=float)
OUT_MD, OUT_JSON = arg("--out-md"), arg("--out-json")


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace, object], dict | None]
    arguments: tuple
    job: Callable[[argparse.Namespace], str] | None  # the child run's name; None: not tracked
    params: Callable[[argparse.Namespace], dict] | None
    inputs: tuple[str, ...]  # argument names whose paths the lineage records
    outputs: tuple[str, ...]
    artifacts: tuple[str, ...]

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"lmforge {self.name}", description=self.run.__doc__)
        for flags, kwargs in self.arguments:
            parser.add_argument(*flags, **kwargs)
        return parser


REGISTRY: dict[str, Command] = {}


def command(name: str, *arguments, job: str | Callable | None = None, params=None,
            inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = (),
            artifacts: tuple[str, ...] = (), tracked: bool = True):
    """Register the decorated `func(args, job) -> metrics | None` as `lmforge <name>`.

    `job` names the MLflow child run (a string or a function of the arguments; default the
    command's name); `params` (a function of the arguments) defaults to the `--cfg` object."""
    def register(func):
        if name in REGISTRY:
            raise ValueError(f"command {name} is declared twice")
        # The run's name: `job` (a string or a function of the arguments), else the command's
        # name as the rules spell it (make-tasks → make_tasks).
        fixed = job or name.replace("-", "_")
        job_name = job if callable(job) else (lambda args: fixed)
        REGISTRY[name] = Command(name, func, arguments, job_name if tracked else None, params,
                                 inputs, outputs, artifacts)
        return func
    return register


class UntrackedJob:
    """The job a command gets where nothing is logged (ranks > 0, untracked commands)."""

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _paths(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value:
            out[name] = [value] if isinstance(value, str) else list(value)
    return out


def execute(cmd: Command, args: argparse.Namespace) -> int | None:
    for name in DOCUMENT_ARGUMENTS:
        if isinstance(getattr(args, name, None), list):
            setattr(args, name, document_files(getattr(args, name)))
    if cmd.job is None or rank_and_world()[0] != 0:
        return _status(cmd.run(args, UntrackedJob()))
    from lmforge.io import lineage, tracking

    params = cmd.params(args) if cmd.params else getattr(args, "cfg", None)
    with tracking.job_run(cmd.job(args), params) as job:
        result = cmd.run(args, job)
        if isinstance(result, dict):
            job.log_metrics(result)
        for name in cmd.artifacts:
            job.log_artifact(getattr(args, name))
        # After the run: a command may name more inputs it found (evaluate's task files).
        lineage.record(job, lineage.describe(_paths(args, cmd.inputs)),
                       lineage.describe(_paths(args, cmd.outputs)))
    return _status(result)


def _status(result) -> int | None:
    """A command returns its metrics, or an exit status (launch, lineage)."""
    return result if isinstance(result, int) and not isinstance(result, bool) else None


def main(name: str, argv: list[str]) -> int:
    cmd = REGISTRY[name]
    args = cmd.parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status = execute(cmd, args)
    except (InputError, ValueError, KeyError, FileNotFoundError) as err:
        if os.environ.get("LMFORGE_DEBUG"):
            raise
        print(f"lmforge {name}: error: {err}", file=sys.stderr)
        return 2
    return status or 0

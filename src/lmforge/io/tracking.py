"""MLflow tracking: one parent run per `snakemake` invocation, one child run per job.

The Snakefile's `onstart` creates the parent run and exports its id; each job's CLI call opens
a child run under it, tagged with the git commit and the config hash. The client API is used
directly (no global active run), so nothing leaks between jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ENV_PARENT = "LMFORGE_PARENT_RUN_ID"
ENV_EXPERIMENT = "LMFORGE_MLFLOW_EXPERIMENT"
ENV_CONFIG_HASH = "LMFORGE_CONFIG_HASH"
ENV_GIT_COMMIT = "LMFORGE_GIT_COMMIT"
DEFAULT_URI = "sqlite:///mlflow.db"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")  # the characters MLflow accepts


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def git_commit(cwd: str | Path = ".") -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def absolute_sqlite_uri(uri: str, base: str | Path) -> str:
    """sqlite:///relative.db → sqlite:////abs/relative.db, so every job sees the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        path = (Path(base) / uri[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def open_client(uri: str | None = None):
    """The tracking store: `uri`, else $MLFLOW_TRACKING_URI, else mlflow.db here."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    location = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the cwd
        location = Path(uri[len("sqlite:///"):]).with_name("mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_parent(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    client = open_client()
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name, tags=tags)
    return run.info.run_id


def end_parent(run_id: str, success: bool) -> None:
    open_client().set_terminated(run_id, "FINISHED" if success else "FAILED")


def start_invocation(config: dict, workdir: str | Path, basedir: str | Path) -> str:
    """Open the parent run of one `snakemake` call and export what its jobs need to join it.

    Returns the tracking URI (relative sqlite paths made absolute against `workdir`).
    """
    uri = absolute_sqlite_uri(config["mlflow"]["tracking_uri"], workdir)
    commit = git_commit(basedir)
    digest = config_hash(config)
    os.environ.update({"MLFLOW_TRACKING_URI": uri, ENV_EXPERIMENT: config["mlflow"]["experiment"],
                       ENV_CONFIG_HASH: digest, ENV_GIT_COMMIT: commit})
    os.environ[ENV_PARENT] = start_parent(
        config["mlflow"]["experiment"], "snakemake",
        {"lmforge.git_commit": commit, "lmforge.config_hash": digest},
    )
    return uri


def end_invocation(success: bool) -> None:
    if os.environ.get(ENV_PARENT):
        end_parent(os.environ[ENV_PARENT], success)


class JobRun:
    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_METRIC_NAME.sub("_", k), float(v), now, step)
                 for k, v in sorted(_flatten(metrics).items())
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path))

    def log_dict(self, value: dict, name: str) -> None:
        self.client.log_dict(self.run_id, value, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in sorted(tags.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[start : start + 100])


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def provenance() -> dict[str, str]:
    """The git commit and config hash of the invocation this job belongs to."""
    return {"git_commit": os.environ.get(ENV_GIT_COMMIT) or git_commit(),
            "config_hash": os.environ.get(ENV_CONFIG_HASH, "unknown")}


@contextlib.contextmanager
def job_run(name: str, params: dict | None = None) -> Iterator[JobRun]:
    """A child run of the current Snakemake invocation (or a top-level run when used alone)."""
    client = open_client()
    experiment = os.environ.get(ENV_EXPERIMENT, "lmforge")
    tags = {"lmforge.job": name,
            **{f"lmforge.{key}": value for key, value in provenance().items()}}
    if os.environ.get(ENV_PARENT):
        tags["mlflow.parentRunId"] = os.environ[ENV_PARENT]
    run = client.create_run(_experiment_id(client, experiment), run_name=name, tags=tags)
    job = JobRun(client, run.info.run_id)
    if params:
        job.log_params(params)
    try:
        yield job
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")

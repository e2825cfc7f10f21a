"""MLflow tracking: one parent run per `snakemake` invocation, one child run per job.

The Snakefile's `onstart` creates the parent run and exports its id; each job's CLI call opens
a child run under it, tagged with the git commit and the config hash.

A job does not talk to MLflow itself: importing MLflow and opening its store costs about 5 s
per process (docs/configuration.md), more than most jobs' work. It appends its run (parameters,
metrics with their times, tags, copies of its artifacts) as JSON lines to a spool file, and
`sync` replays spooled runs into the store through MLflow's client: at the end of the
invocation (`onsuccess` / `onerror`), whenever `lmforge sync-runs` is called, and, for a job
that outlives `mlflow.sync_every_s`, from the job itself as it goes, so long training runs
show live curves.
One writer per store at a time also spares a sqlite store on a shared filesystem the lock
contention of many jobs. The client API is used directly (no global active run), so nothing
leaks between jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from lmforge.io.storage import atomic_path
from lmforge.runner import arg, command

log = logging.getLogger(__name__)

ENV_PARENT = "LMFORGE_PARENT_RUN_ID"
ENV_EXPERIMENT = "LMFORGE_MLFLOW_EXPERIMENT"
ENV_CONFIG_HASH = "LMFORGE_CONFIG_HASH"
ENV_GIT_COMMIT = "LMFORGE_GIT_COMMIT"
ENV_SPOOL = "LMFORGE_TRACKING_SPOOL"
ENV_SYNC_EVERY = "LMFORGE_TRACKING_SYNC_EVERY_S"
SPOOL_DIR = ".lmforge/tracking-spool"  # under the invocation's working directory
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


def _experiment_id(client, name: str, uri: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
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

    Runs an earlier invocation left in the spool (it was killed) are sent first. Returns the
    tracking URI (relative sqlite paths made absolute against `workdir`).
    """
    uri = absolute_sqlite_uri(config["mlflow"]["tracking_uri"], workdir)
    commit = git_commit(basedir)
    digest = config_hash(config)
    spool = Path(workdir).resolve() / SPOOL_DIR
    sync(spool, final=True)
    os.environ.update({"MLFLOW_TRACKING_URI": uri, ENV_EXPERIMENT: config["mlflow"]["experiment"],
                       ENV_CONFIG_HASH: digest, ENV_GIT_COMMIT: commit, ENV_SPOOL: str(spool),
                       ENV_SYNC_EVERY: str(config["mlflow"]["sync_every_s"])})
    os.environ[ENV_PARENT] = start_parent(
        config["mlflow"]["experiment"], "snakemake",
        {"lmforge.git_commit": commit, "lmforge.config_hash": digest},
    )
    return uri


def end_invocation(success: bool) -> None:
    """Send the invocation's spooled runs (its jobs have all ended), then close its run."""
    if os.environ.get(ENV_SPOOL):
        sync(Path(os.environ[ENV_SPOOL]), final=True)
    if os.environ.get(ENV_PARENT):
        end_parent(os.environ[ENV_PARENT], success)


class JobRun:
    """Writes one run to MLflow: what `sync` replays a spooled run's events through."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict, step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, timestamp, step) for k, v in sorted(metrics.items())]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in sorted(tags.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[start : start + 100])

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


class SpooledRun:
    """A job's run, appended as JSON lines to `<spool>/<id>.jsonl`; artifacts are copied into
    `<spool>/<id>/` when logged, as MLflow would upload them then. The methods are those stage
    code calls on its `job`."""

    def __init__(self, spool: Path, name: str, tags: dict[str, str], sync_every_s: float | None):
        spool.mkdir(parents=True, exist_ok=True)
        self.id = uuid.uuid4().hex
        self.path, self.files = spool / f"{self.id}.jsonl", spool / self.id
        self._handle = open(self.path, "a", encoding="utf-8")
        self._sync_every_s, self._synced_at = sync_every_s, time.monotonic()
        self._live = False  # sent to MLflow once already: its end is sent at once too
        self._artifacts = 0
        self._write("start", uri=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI),
                    experiment=os.environ.get(ENV_EXPERIMENT, "lmforge"), name=name, tags=tags)

    def _write(self, event: str, **fields) -> None:
        record = {"event": event, "time": int(time.time() * 1000), **fields}
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        due = (self._sync_every_s is not None
               and time.monotonic() - self._synced_at >= self._sync_every_s)
        if due or (event == "end" and self._live):
            sync_file(self.path)
            self._live, self._synced_at = True, time.monotonic()

    def log_params(self, params: dict) -> None:
        self._write("params", params={k: str(v)[:6000] for k, v in _flatten(params).items()})

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        numbers = {_METRIC_NAME.sub("_", k): float(v) for k, v in _flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self._write("metrics", metrics=numbers, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write("tags", tags=tags)

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).is_file():
            self._store(Path(path).name, lambda target: shutil.copyfile(path, target))

    def log_dict(self, value: dict, name: str) -> None:
        self._store(name, lambda target: Path(target).write_text(json.dumps(value, indent=1)))

    def _store(self, name: str, write) -> None:
        # Each copy gets its own folder, so an artifact logged twice keeps both contents.
        target = self.files / str(self._artifacts) / name
        self._artifacts += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)
        self._write("artifact", file=str(target.relative_to(self.files)),
                    artifact_path=str(Path(name).parent) if Path(name).parent.name else None)

    def end(self, status: str) -> None:
        self._write("end", status=status)
        self._handle.close()


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
def job_run(name: str, params: dict | None = None) -> Iterator[SpooledRun]:
    """A child run of the current Snakemake invocation, spooled for its `sync`; used alone
    (no invocation), a top-level run sent to MLflow when the job ends."""
    invocation = os.environ.get(ENV_SPOOL)
    spool = Path(invocation) if invocation else Path(tempfile.mkdtemp(prefix="lmforge-run-"))
    tags = {"lmforge.job": name,
            **{f"lmforge.{key}": value for key, value in provenance().items()}}
    if os.environ.get(ENV_PARENT):
        tags["mlflow.parentRunId"] = os.environ[ENV_PARENT]
    every = os.environ.get(ENV_SYNC_EVERY)
    run = SpooledRun(spool, name, tags, float(every) if invocation and every else None)
    try:
        if params:
            run.log_params(params)
        yield run
    except BaseException:
        run.end("FAILED")
        raise
    else:
        run.end("FINISHED")
    finally:
        if not invocation:
            sync(spool, final=True)
            shutil.rmtree(spool)


def current_spool() -> Path:
    """The spool of the invocation this process belongs to, else the one under the cwd."""
    return Path(os.environ.get(ENV_SPOOL) or SPOOL_DIR)


def sync(spool: Path, final: bool = False) -> int:
    """Replay every spooled run into MLflow; returns how many runs it wrote to. Runs still
    going stay RUNNING and are continued by the next sync; `final` (their jobs are gone)
    marks a run that never ended KILLED."""
    if not spool.is_dir():
        return 0
    clients: dict[str, object] = {}
    return sum(sync_file(path, final, clients) for path in sorted(spool.glob("*.jsonl")))


def sync_file(path: Path, final: bool = False, clients: dict | None = None) -> bool:
    """Replay the events of one spool file not sent yet; the file is removed once its run has
    ended in MLflow. Syncs of one file take turns (an flock on it)."""
    clients = {} if clients is None else clients
    state_path = path.with_suffix(".state")
    try:
        handle = open(path, "rb")
    except FileNotFoundError:  # another sync finished it
        return False
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not path.exists():  # another sync finished it while this one waited
            return False
        state = json.loads(state_path.read_text()) if state_path.exists() else {"lines": 0}
        lines = handle.read().split(b"\n")[:-1]  # a last line without its newline is unwritten
        events = [json.loads(line) for line in lines[state["lines"]:]]
        if "uri" not in state and not events:  # killed before its first line was written
            if final:
                path.unlink()
            return False
        if not events and not final:
            return False
        run = _replay(state, events, clients, path.with_suffix(""))
        ended = state.get("ended", False)
        if final and not ended:
            run.client.set_terminated(run.run_id, "KILLED")
            log.warning("run %s of job %s never ended: marked KILLED", run.run_id, state["name"])
            ended = True
        if ended:
            shutil.rmtree(path.with_suffix(""), ignore_errors=True)
            state_path.unlink(missing_ok=True)
            path.unlink()
        else:
            state["lines"] = len(lines)
            with atomic_path(state_path) as tmp:
                Path(tmp).write_text(json.dumps(state))
    return True


def _replay(state: dict, events: list[dict], clients: dict, files: Path) -> JobRun:
    """Apply `events` to the run `state` names (created by the start event)."""
    if "uri" not in state:
        start = events[0]
        state.update(uri=start["uri"], name=start["name"])
    if state["uri"] not in clients:
        clients[state["uri"]] = open_client(state["uri"])
    client = clients[state["uri"]]
    run = JobRun(client, state.get("run_id", ""))
    for event in events:
        kind = event["event"]
        if kind == "start":
            experiment = _experiment_id(client, event["experiment"], event["uri"])
            run.run_id = state["run_id"] = client.create_run(
                experiment, start_time=event["time"], tags=event["tags"],
                run_name=event["name"]).info.run_id
        elif kind == "params":
            run.log_params(event["params"])
        elif kind == "metrics":
            run.log_metrics(event["metrics"], event["step"], event["time"])
        elif kind == "tags":
            run.set_tags(event["tags"])
        elif kind == "artifact":
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            run.log_artifact(files / event["file"], event["artifact_path"])
        elif kind == "end":
            client.set_terminated(run.run_id, event["status"], end_time=event["time"])
            state["ended"] = True
    return run


@command("sync-runs", arg("--spool", default=None), tracked=False)
def sync_runs(args, job) -> None:
    """Send the spooled runs of jobs (running or ended) to MLflow now, e.g. to watch a long
    training run's curves; the invocation does this itself when it ends."""
    spool = Path(args.spool) if args.spool else current_spool()
    print(f"{sync(spool)} runs sent to MLflow from {spool}")

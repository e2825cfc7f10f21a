import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.io import tracking


def _runs(uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"attributes.run_name = '{name}'")


def _invocation(mlflow_store, tmp_path, sync_every_s=60) -> dict:
    config = {"mlflow": {"tracking_uri": mlflow_store, "experiment": "tests",
                         "sync_every_s": sync_every_s}, "seed": 1}
    tracking.start_invocation(config, tmp_path, tmp_path)
    return config


def test_child_runs_hang_under_the_invocation_run(mlflow_store, tmp_path):
    from mlflow.tracking import MlflowClient

    config = _invocation(mlflow_store, tmp_path)
    parent = tracking.os.environ[tracking.ENV_PARENT]
    report = tmp_path / "report.md"
    report.write_text("as logged")
    with tracking.job_run("stage", {"a": {"b": 1}}) as run:
        run.log_metrics({"loss": 1.5, "nested": {"x": 2}, "skip": "text"}, step=3)
        run.log_artifact(report)
        run.log_dict({"k": 1}, "record.json")
    report.write_text("changed after the job logged it")
    assert _runs(mlflow_store, "stage") == []  # spooled: MLflow not opened by the job
    tracking.end_invocation(True)
    client = MlflowClient(mlflow_store)
    [child] = _runs(mlflow_store, "stage")
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["lmforge.config_hash"] == tracking.config_hash(config)
    assert child.data.params == {"a.b": "1"}
    assert child.data.metrics == {"loss": 1.5, "nested.x": 2.0}
    [loss] = client.get_metric_history(child.info.run_id, "loss")
    assert loss.step == 3
    assert Path(client.download_artifacts(child.info.run_id, "report.md")).read_text() == \
        "as logged"
    assert json.loads(Path(client.download_artifacts(child.info.run_id, "record.json"))
                      .read_text()) == {"k": 1}
    assert client.get_run(parent).info.status == "FINISHED" == child.info.status
    assert not list((tmp_path / tracking.SPOOL_DIR).iterdir())  # sent runs leave the spool


def test_failed_job_marks_its_run_failed(mlflow_store):
    try:
        with tracking.job_run("boom"):
            raise RuntimeError
    except RuntimeError:
        pass
    [run] = _runs(mlflow_store, "boom")  # used alone, a job sends its run when it ends
    assert run.info.status == "FAILED"


def test_a_running_job_syncs_as_it_goes_and_a_killed_one_ends_killed(mlflow_store, tmp_path):
    from mlflow.tracking import MlflowClient

    _invocation(mlflow_store, tmp_path, sync_every_s=0)  # every event sent at once
    killed = tracking.SpooledRun(tracking.current_spool(), "killed", {}, None)
    killed.log_metrics({"loss": 3.0}, step=1)
    with tracking.job_run("train") as run:
        run.log_metrics({"loss": 2.0}, step=1)
        [live] = _runs(mlflow_store, "train")  # visible while the job runs
        assert live.info.status == "RUNNING" and live.data.metrics == {"loss": 2.0}
        run.log_metrics({"loss": 1.0}, step=2)
    client = MlflowClient(mlflow_store)
    assert [m.value for m in client.get_metric_history(live.info.run_id, "loss")] == [2.0, 1.0]
    assert client.get_run(live.info.run_id).info.status == "FINISHED"  # a live run's end too
    assert tracking.sync(tracking.current_spool()) == 1  # only `killed` had news
    assert _runs(mlflow_store, "killed")[0].info.status == "RUNNING"
    killed.log_metrics({"loss": 2.5}, step=2)  # the next sync continues where the last stopped
    tracking.end_invocation(False)  # its jobs are gone: the unended run was killed
    [run] = _runs(mlflow_store, "killed")
    assert run.info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [3.0, 2.5]


def test_cli_reports_bad_input_without_traceback(mlflow_store, tmp_path, capsys):
    bad = tmp_path / "docs.jsonl"
    bad.write_text("{not json}\n")
    code = main(["tag", "--tagger", "pii", "--docs", str(bad), "--out",
                 str(tmp_path / "a.jsonl.gz"), "--cfg", "{}"])
    err = capsys.readouterr().err
    assert code == 2 and "docs.jsonl:1: malformed JSON" in err and "Traceback" not in err
    assert not (tmp_path / "a.jsonl.gz").exists()


def test_cli_rejects_malformed_config_json(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "make-tasks", "--cfg", "{oops",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_absolute_sqlite_uri(tmp_path):
    assert tracking.absolute_sqlite_uri("sqlite:///x/m.db", tmp_path) == \
        f"sqlite:///{tmp_path}/x/m.db"
    assert tracking.absolute_sqlite_uri("http://host:5000", tmp_path) == "http://host:5000"
    assert json.dumps(tracking.config_hash({"a": 1})) != json.dumps(tracking.config_hash({"a": 2}))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path):
    """`mlflow server` on loopback, as a cluster's shared tracking service."""
    import time
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
         str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        os.killpg(server.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start")
    yield uri
    # The whole group: the server's uvicorn worker and job consumers (huey) outlive a terminated
    # server and would keep polling for the rest of the session.
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.workflow
def test_a_tracking_server_uri_in_the_config_collects_the_jobs(repo, tracking_server, tmp_path):
    import yaml
    from mlflow.tracking import MlflowClient

    from workflow_helpers import snakemake

    config = yaml.safe_load((repo / "fast.yaml").read_text())
    config["mlflow"] = {"tracking_uri": tracking_server, "experiment": "on-a-server"}
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(config))
    snakemake(repo, tmp_path, "results/tasks/cloze_mc.jsonl.gz", "--configfile",
              str(tmp_path / "server.yaml"), "--forceall")
    assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing went to a local store
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("on-a-server")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "lmforge.job" not in r.data.tags]
    child = [r for r in runs if r.data.tags.get("lmforge.job") == "make_tasks"]
    assert len(parent) == 1 and len(child) == 1
    assert child[0].data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    assert child[0].data.metrics["items.cloze_mc"] == 60
    assert parent[0].info.status == "FINISHED" == child[0].info.status

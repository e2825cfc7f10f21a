import json
import subprocess
import sys

from lmforge import tracking
from lmforge.cli import main


def test_child_runs_hang_under_the_invocation_run(mlflow_store, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    config = {"mlflow": {"tracking_uri": mlflow_store, "experiment": "tests"}, "seed": 1}
    tracking.start_invocation(config, tmp_path, tmp_path)
    parent = tracking.os.environ[tracking.ENV_PARENT]
    with tracking.job_run("stage", {"a": {"b": 1}}) as run:
        run.log_metrics({"loss": 1.5, "nested": {"x": 2}, "skip": "text"}, step=3)
    tracking.end_invocation(True)
    client = MlflowClient(mlflow_store)
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["lmforge.config_hash"] == tracking.config_hash(config)
    assert child.data.params == {"a.b": "1"}
    assert child.data.metrics == {"loss": 1.5, "nested.x": 2.0}
    assert client.get_run(parent).info.status == "FINISHED" == child.info.status


def test_failed_job_marks_its_run_failed(mlflow_store):
    from mlflow.tracking import MlflowClient

    try:
        with tracking.job_run("boom") as run:
            raise RuntimeError
    except RuntimeError:
        pass
    assert MlflowClient(mlflow_store).get_run(run.run_id).info.status == "FAILED"


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

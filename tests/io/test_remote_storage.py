"""Remote inputs and outputs through Snakemake's storage plugins, against loopback servers.

A WARC file is served over HTTP (Python's http.server) and read by the workflow as a Common
Crawl URL would be, another is read from an S3 bucket on moto's S3-compatible server, and the
results go to that bucket. The documents
extracted that way must equal those of a local run.
"""

import functools
import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from workflow_helpers import DISTRIBUTED_ENV, ROOT

BUCKET = "lmforge-results"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}
pytestmark = pytest.mark.workflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def warc_site(demo_crawl):
    """An HTTP server on loopback serving the demo crawl's WARC files."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(demo_crawl / "crawl"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server in its own process, as a standalone S3 service."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:  # not listening yet
            threading.Event().wait(0.1)
    else:
        server.kill()
        pytest.fail("moto_server did not start")
    yield endpoint, client
    server.kill()
    server.wait()


def _boto_credentials() -> dict:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test",
            "region_name": "us-east-1"}


def _snakemake(work: Path, config: dict, *args: str):
    (work / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(CREDENTIALS, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(
        ["timeout", "-k", "10", "600", sys.executable, "-m", "snakemake", *args, "-s",
         str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2", "--configfile",
         str(work / "config.yaml")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _warc_config(paths: list[str]) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["crawl"].update(source="warc", name="cc", warc_paths=paths)
    return config


TARGET = "results/documents/cc/shard-0000.jsonl.gz"
TARGET_S3 = "results/documents/cc/shard-0001.jsonl.gz"
REPORT = "results/documents/cc/shard-0000.extract.json"


def test_warc_over_http_and_results_on_s3_equal_a_local_run(demo_crawl, warc_site, s3_endpoint,
                                                            tmp_path):
    endpoint, client = s3_endpoint
    url = f"{warc_site}/shard-0000.warc.gz"
    # A second WARC file from the bucket itself (shards follow the sorted inputs: http, s3).
    client.upload_file(str(demo_crawl / "crawl" / "shard-0001.warc.gz"), BUCKET,
                       "crawl/shard-0001.warc.gz")
    s3_url = f"s3://{BUCKET}/crawl/shard-0001.warc.gz"
    log = _snakemake(tmp_path / "remote", _warc_config([url, s3_url]), TARGET, TARGET_S3,
                     "--default-storage-provider", "s3",
                     "--default-storage-prefix", f"s3://{BUCKET}/run",
                     "--storage-s3-endpoint-url", endpoint,
                     "--storage-s3-access-key", "test", "--storage-s3-secret-key", "test")
    assert f"Retrieving from storage: {url}" in log
    assert f"Retrieving from storage: {s3_url}" in log
    stored = client.get_object(Bucket=BUCKET, Key=f"run/{TARGET}")["Body"].read()
    stored_s3 = client.get_object(Bucket=BUCKET, Key=f"run/{TARGET_S3}")["Body"].read()
    report = client.get_object(Bucket=BUCKET, Key=f"run/{REPORT}")
    assert b'"documents"' in report["Body"].read()

    _snakemake(tmp_path / "local", _warc_config([str(demo_crawl / "crawl" / "*.warc.gz")]),
               TARGET, TARGET_S3)
    for remote, target in ((stored, TARGET), (stored_s3, TARGET_S3)):
        local = (tmp_path / "local" / target).read_bytes()
        assert hashlib.sha256(remote).hexdigest() == hashlib.sha256(local).hexdigest()
        assert len(gzip.decompress(local).splitlines()) > 10


def test_a_missing_remote_warc_is_a_clear_error(warc_site, tmp_path):
    config = _warc_config([f"{warc_site}/no-such-file.warc.gz"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", TARGET, "-n", "-s", str(ROOT / "Snakefile"), "-d",
         str(tmp_path), "--cores", "1", "--configfile", str(tmp_path / "config.yaml")],
        capture_output=True, text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode != 0
    assert "no-such-file.warc.gz" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
pytest_plugins = ["slurm_fixtures"]


@pytest.fixture(scope="session")
def config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture
def cfg(config) -> dict:
    return copy.deepcopy(config)


def unavailable(reason: str, flag: str) -> None:
    """Skip in a user's clone; fail where `flag`=1, as .ci/run sets it: in CI a missing
    third-party file or peer is a broken set-up, not a reason to test less."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 but {reason}")
    pytest.skip(reason)


def require_shared() -> Path:
    if not SHARED_DATA.is_dir():
        unavailable("../shared/data is not present", "LMFORGE_REQUIRE_SHARED")
    return SHARED_DATA


def require_peer(name: str) -> Path:
    """The python of a peer venv made by `make peers`."""
    python = ROOT / ".venv-peers" / name / "bin" / "python"
    if not python.exists():
        unavailable(f"no {name} venv: run `make peers`", "LMFORGE_REQUIRE_PEERS")
    return python


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """Point MLflow at a private sqlite store and detach from any parent run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("LMFORGE_PARENT_RUN_ID", "LMFORGE_CONFIG_HASH", "LMFORGE_GIT_COMMIT",
                 "LMFORGE_TRACKING_SPOOL", "LMFORGE_TRACKING_SYNC_EVERY_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LMFORGE_MLFLOW_EXPERIMENT", "tests")
    return uri


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A loopback Hub (tests/fakehub.py) that the real `huggingface_hub` client talks to,
    with a private cache and a dummy token: no test reaches the real Hub or a real cache."""
    from huggingface_hub import constants

    from fakehub import FakeHub

    with FakeHub() as hub:
        home = tmp_path / "hf-home"
        for name, value in {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home),
                            "HF_TOKEN": "test-token", "HF_HUB_DISABLE_TELEMETRY": "1",
                            "HF_HUB_OFFLINE": "0"}.items():
            monkeypatch.setenv(name, value)  # for subprocesses (the workflow's jobs)
        # This process imported huggingface_hub already: its constants are read at import.
        for name, value in {"ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(home / "hub"),
                            "HUGGINGFACE_CO_URL_TEMPLATE":
                                hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                            "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_OFFLINE": False}.items():
            monkeypatch.setattr(constants, name, value)
        yield hub


@pytest.fixture(scope="session")
def demo_crawl(tmp_path_factory, config) -> Path:
    """The default demo crawl and its tasks, made once per test session."""
    from lmforge.data import democrawl
    from lmforge.eval import generated as tasks

    out = tmp_path_factory.mktemp("demo")
    tasks.make_tasks(out / "tasks", config["tasks"])
    democrawl.write_demo_crawl(out / "crawl", config["crawl"]["demo"], out / "tasks",
                               config["seed"])
    return out


def train_config(**values):
    """A complete training config: small defaults for the keys a test does not set."""
    from lmforge.train.config import TrainConfig

    base = {"steps": 1, "micro_batch_size": 1, "grad_accum": 1, "lr": 1e-3, "min_lr_ratio": 0.1,
            "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1.0, "zero_stage": 0,
            "precision": "fp32", "log_every": 1}
    return TrainConfig.from_dict({**base, **values})


def make_docs(texts: list[str], urls: list[str] | None = None, source: str = "test") -> list[dict]:
    urls = urls or [f"https://example.com/{i}" for i in range(len(texts))]
    return [{"id": f"d{i}", "text": t, "source": source, "added": None, "created": None,
             "metadata": {"url": u}} for i, (t, u) in enumerate(zip(texts, urls))]


def generated_task_specs(tasks_dir: Path, config: dict) -> dict:
    """The specs decontamination uses for the workflow's generated tasks in `tasks_dir`."""
    from lmforge.eval.specs import decontamination_specs

    return decontamination_specs(config["evaluate"], str(tasks_dir))


def tokenizer_corpus(folder: Path, texts: list[str], vocab_size: int = 600) -> Path:
    """docs.jsonl.gz of the texts in `folder` and a tokenizer trained on them (tok.json)."""
    from lmforge.data.tokenize import train_tokenizer
    from lmforge.io.storage import write_jsonl_gz

    write_jsonl_gz(folder / "docs.jsonl.gz", make_docs(texts))
    train_tokenizer([str(folder / "docs.jsonl.gz")], folder / "tok.json", vocab_size, 1, 0.1)
    return folder


def tiny_olmo2(folder: Path, texts: list[str], vocab_size: int, max_seq_len: int) -> Path:
    """A small random OLMo 2 (seed 0) and a tokenizer trained on the texts, in `folder`: the
    tokenizer (`tokenizer.json`), the lmforge checkpoint (`native`) and its `transformers`
    export with the tokenizer (`hf`)."""
    import torch

    from lmforge.data.tokenize import train_tokenizer
    from lmforge.io.storage import write_jsonl_gz
    from lmforge.model.checkpoint import save_model
    from lmforge.model.hf import export_hf
    from lmforge.model.olmo2 import ModelConfig, Olmo2

    write_jsonl_gz(folder / "docs.jsonl.gz", make_docs(texts))
    train_tokenizer([str(folder / "docs.jsonl.gz")], folder / "tokenizer.json", vocab_size, 1,
                    0.1)
    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2,
                              mlp_hidden=64, max_seq_len=max_seq_len))
    save_model(model, folder / "native")
    export_hf(model, folder / "hf", tokenizer=folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    """A copy of the workflow, so a test may touch its code files."""
    from workflow_helpers import copy_repo

    return copy_repo(tmp_path_factory.mktemp("repo"))


# Session fixtures that build in the background (BackgroundSnakemake): started as the session
# begins when a selected test needs them, while the other tests run.
BACKGROUND = ("finished_dag", "slurm_data_run")


@pytest.fixture(scope="session", autouse=True)
def background_runs(request):
    needed = {name for item in request.session.items for name in item.fixturenames}
    for name in BACKGROUND:
        if name in needed:
            # A failure or skip is cached with the fixture: each test that needs it reports it.
            with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
                request.getfixturevalue(name)


@pytest.fixture(scope="session")
def finished_dag(repo, tmp_path_factory):
    """The whole tiny DAG (shortened training, local executor), one thread per job and two jobs
    at a time: the jobs share the two cores with the tests that run meanwhile."""
    from workflow_helpers import BackgroundSnakemake

    run = BackgroundSnakemake(repo, tmp_path_factory.mktemp("work"), "--configfile",
                              str(repo / "fast.yaml"), "--max-threads", "1",
                              env={"OMP_NUM_THREADS": "1"})
    yield run
    run.stop()


@pytest.fixture(scope="session")
def finished(finished_dag) -> Path:
    """The working directory of the finished DAG."""
    return finished_dag.wait()


def pytest_collection_modifyitems(items):
    """Every test that runs the workflow is slow (`make test-fast` leaves them out). Tests of
    the finished DAG run last: it builds in the background meanwhile (`background_runs`)."""
    for item in items:
        if item.get_closest_marker("workflow"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: "finished" in item.fixturenames)  # stable: order kept otherwise

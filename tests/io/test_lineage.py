"""Lineage records and their chain, on commands declared with the runner and a private store."""

import hashlib
from pathlib import Path

from lmforge import runner
from lmforge.io import lineage
from lmforge.io.tracking import open_client
from lmforge.runner import OUT, arg, command


@command("test-lineage-split", arg("--source"), arg("--out-dir"), job="split",
         inputs=("source",), outputs=("out_dir",))
def _split(args, job):
    """Each line of the source into its own file."""
    Path(args.out_dir).mkdir()
    for i, line in enumerate(Path(args.source).read_text().splitlines()):
        (Path(args.out_dir) / f"{i}.txt").write_text(line)
    return {"lines": i + 1}


@command("test-lineage-join", arg("--parts", nargs="+"), arg("--label"), OUT, job="join",
         params=lambda args: {"label": args.label}, inputs=("parts", "label"), outputs=("out",))
def _join(args, job):
    """The parts upper-cased, in one file."""
    Path(args.out).write_text("".join(Path(p).read_text().upper() for p in args.parts))


def _run(name: str, *argv: str) -> None:
    cmd = runner.REGISTRY[name]
    runner.execute(cmd, cmd.parser().parse_args(list(argv)))


def test_the_chain_follows_recorded_hashes_through_files_inside_directories(mlflow_store,
                                                                           tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("crawl.txt").write_text("alpha\nbeta\n")
    _run("test-lineage-split", "--source", "crawl.txt", "--out-dir", "parts")
    _run("test-lineage-join", "--parts", "parts/1.txt", "parts/0.txt", "--label", "x",
         "--out", "joined.txt")
    client = open_client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    item = lineage.describe_path("joined.txt")
    tree = lineage.Lineage(client, experiments).chain(item["path"], item["sha256"])
    assert tree["run"]["name"] == "join"
    parts = tree["inputs"]  # the label "x" is not a path: not an input
    assert [Path(p["path"]).name for p in parts] == ["1.txt", "0.txt"]
    assert all(p["run"]["name"] == "split" for p in parts)
    assert parts[1].get("repeated") and "inputs" not in parts[1]
    (source,) = lineage.sources(tree)
    assert source["path"] == str(tmp_path / "crawl.txt") and "run" not in source
    assert source["sha256"] == hashlib.sha256(b"alpha\nbeta\n").hexdigest()
    lines = lineage.render(tree, root=tmp_path)
    assert lines[0].startswith("joined.txt  sha256:") and "<- join (run " in lines[0]
    assert any(line.strip().startswith("crawl.txt") and line.endswith("[source]")
               for line in lines)


def test_a_rewritten_output_is_found_by_its_new_run_and_a_stale_one_by_none(mlflow_store,
                                                                            tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("crawl.txt").write_text("one\n")
    _run("test-lineage-split", "--source", "crawl.txt", "--out-dir", "a")
    _run("test-lineage-join", "--parts", "a/0.txt", "--label", "x", "--out", "j.txt")
    first = lineage.describe_path("j.txt")
    Path("crawl.txt").write_text("two\n")
    _run("test-lineage-split", "--source", "crawl.txt", "--out-dir", "b")
    _run("test-lineage-join", "--parts", "b/0.txt", "--label", "x", "--out", "j.txt")
    client = open_client()
    found = lineage.Lineage(client, [e.experiment_id for e in client.search_experiments()])
    second = lineage.describe_path("j.txt")
    assert found.producer(second["path"], second["sha256"]) is not None
    old_run, _ = found.producer(first["path"], first["sha256"])
    new_run, _ = found.producer(second["path"], second["sha256"])
    assert old_run.info.run_id != new_run.info.run_id
    assert found.producer(second["path"], "0" * 64) is None


def test_describe_hashes_directories_by_their_listing(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/x").write_text("1")
    before = lineage.describe_path(tmp_path / "d")
    assert before["files"] == {"x": hashlib.sha256(b"1").hexdigest()}
    (tmp_path / "d/x").rename(tmp_path / "d/y")
    assert lineage.describe_path(tmp_path / "d")["sha256"] != before["sha256"]
    assert lineage.describe({"models": ["name=" + str(tmp_path / "d"), "no-such-path"]}) == {
        "models": [lineage.describe_path(tmp_path / "d")]}


def test_snakemakes_directory_marker_is_not_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/x").write_text("1")
    before = lineage.describe_path(tmp_path / "d")
    (tmp_path / "d/.snakemake_timestamp").write_text("")
    assert lineage.describe_path(tmp_path / "d") == before


def test_a_command_that_returns_metrics_exits_zero_on_every_rank(monkeypatch, mlflow_store,
                                                                 tmp_path):
    monkeypatch.chdir(tmp_path)
    Path("crawl.txt").write_text("alpha\n")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert runner.main("test-lineage-split", ["--source", "crawl.txt", "--out-dir",
                                                  f"parts-{rank}"]) == 0
    names = [r.info.run_name for r in open_client().search_runs(
        [e.experiment_id for e in open_client().search_experiments()])]
    assert names == ["split"]  # rank 1 ran untracked

"""Lineage: which runs, inputs and filter decisions produced an artifact, back to the crawl.

Every tracked job records, in its MLflow child run, the content hash (SHA-256) of each path it
read and wrote: a file's bytes, or a directory's sorted (relative path, file hash) list, whose
files are listed too. Each output also becomes a run tag keyed by a digest of its absolute
path, so the producer of a path is one indexed query. `lmforge lineage PATH` starts from the
file on disk, finds the run whose recorded output has the same content, and follows that run's
inputs the same way until it reaches files no job produced (the WARC files, the config's
external inputs). A hash that no run recorded is reported as such: the file changed after its
run, or was made outside the workflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from lmforge.runner import arg, command

RECORD = "lineage.json"
OUTPUT_TAG = "lmforge.output."
CHUNK = 1 << 20
# Snakemake marks a finished directory output with this file, after the job's run.
IGNORED = {".snakemake_timestamp"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_path(path: str | Path) -> dict:
    """{path (absolute), sha256[, files: {relative path: sha256}]} of a file or directory."""
    path = Path(path).absolute()
    if path.is_dir():
        files = {str(p.relative_to(path)): file_sha256(p)
                 for p in sorted(path.rglob("*")) if p.is_file() and p.name not in IGNORED}
        listing = "".join(f"{name}\0{sha}\n" for name, sha in files.items())
        return {"path": str(path), "sha256": hashlib.sha256(listing.encode()).hexdigest(),
                "files": files}
    return {"path": str(path), "sha256": file_sha256(path)}


def _as_path(value: str) -> str | None:
    """A path argument, or the PATH of a NAME=PATH argument; None when neither exists."""
    if os.path.exists(value):
        return value
    name, sep, path = value.partition("=")
    return path if sep and os.path.exists(path) else None


def describe(paths: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Each argument's existing paths described; arguments that are not paths are left out."""
    out = {}
    for name, values in paths.items():
        found = [describe_path(p) for p in map(_as_path, values) if p]
        if found:
            out[name] = found
    return out


def path_key(path: str | Path) -> str:
    return hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:32]


def record(job, inputs: dict[str, list[dict]], outputs: dict[str, list[dict]]) -> None:
    job.log_dict({"inputs": inputs, "outputs": outputs}, RECORD)
    job.set_tags({OUTPUT_TAG + path_key(item["path"]): item["sha256"]
                  for items in outputs.values() for item in items})


def _content(item: dict, path: str) -> str | None:
    """The hash `item` (a recorded path) gives `path`: its own, or one of its files'."""
    if item["path"] == path:
        return item["sha256"]
    relative = os.path.relpath(path, item["path"])
    return item.get("files", {}).get(relative)


class Lineage:
    """Producers of paths, looked up in the tracking store (newest matching run first)."""

    def __init__(self, client, experiment_ids: list[str]):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.client, self.experiment_ids = client, experiment_ids
        self._records: dict[str, dict] = {}
        self._writers: dict[Path, list] = {}

    def _runs_writing(self, path: Path) -> list:
        """Runs that recorded `path` among their outputs, newest first."""
        if path not in self._writers:
            key = OUTPUT_TAG + path_key(path)
            self._writers[path] = self.client.search_runs(
                self.experiment_ids, f"tags.`{key}` != ''",
                order_by=["attributes.start_time DESC"])
        return self._writers[path]

    def _record(self, run_id: str) -> dict:
        if run_id not in self._records:
            local = self.client.download_artifacts(run_id, RECORD)
            self._records[run_id] = json.loads(Path(local).read_text())
        return self._records[run_id]

    def producer(self, path: str, sha256: str):
        """(run, recorded output) whose output holds `path` with this content, or None."""
        for candidate in [Path(path), *Path(path).parents]:
            for run in self._runs_writing(candidate):
                for items in self._record(run.info.run_id)["outputs"].values():
                    for item in items:
                        if item["path"] == str(candidate) and _content(item, path) == sha256:
                            return run, item
        return None

    def chain(self, path: str, sha256: str, seen: set[str] | None = None) -> dict:
        """The tree of runs that produced `path` (with this content), down to its sources."""
        seen = set() if seen is None else seen
        node = {"path": path, "sha256": sha256}
        found = self.producer(path, sha256)
        if found is None:
            return node
        run, _ = found
        node["run"] = {"id": run.info.run_id, "name": run.info.run_name,
                       "git_commit": run.data.tags.get("lmforge.git_commit"),
                       "config_hash": run.data.tags.get("lmforge.config_hash")}
        if run.info.run_id in seen:
            node["repeated"] = True  # its inputs are listed where it first appears
            return node
        seen.add(run.info.run_id)
        node["inputs"] = [self.chain(item["path"], item["sha256"], seen)
                          for items in self._record(run.info.run_id)["inputs"].values()
                          for item in items]
        return node


def sources(node: dict) -> list[dict]:
    """The leaves of a chain: files no run produced."""
    if "run" not in node:
        return [node]
    return [leaf for child in node.get("inputs", []) for leaf in sources(child)]


def render(node: dict, depth: int = 0, root: Path | None = None) -> list[str]:
    root = root or Path.cwd()
    shown = os.path.relpath(node["path"], root)
    line = "  " * depth + f"{shown}  sha256:{node['sha256'][:12]}"
    if "run" in node:
        run = node["run"]
        line += f"  <- {run['name']} (run {run['id']})"
        if node.get("repeated"):
            line += "  [inputs listed above]"
    else:
        line += "  [source]"
    lines = [line]
    for child in node.get("inputs", []):
        lines += render(child, depth + 1, root)
    return lines


def lineage_of(artifact: str | Path, tracking_uri: str | None = None) -> tuple[dict, dict]:
    """The chain of runs that produced the artifact's current content, and the artifact's
    own description (path, sha256)."""
    from lmforge.io import tracking

    tracking.sync(tracking.current_spool())  # the runs of jobs that ended since the last sync
    client = tracking.open_client(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    item = describe_path(artifact)
    return Lineage(client, experiments).chain(item["path"], item["sha256"]), item


@command("lineage", arg("artifact"), arg("--json", action="store_true", default=False),
         arg("--tracking-uri", default=None), tracked=False)
def lineage_command(args, job) -> int:
    """The chain of runs, inputs and content hashes that produced an artifact, back to the
    files no job produced (the crawl's WARC files)."""
    tree, item = lineage_of(args.artifact, args.tracking_uri)
    if "run" not in tree:
        print(f"lmforge lineage: no tracked run wrote {args.artifact} with its current content "
              f"(sha256 {item['sha256'][:12]}): changed since, or made outside the workflow",
              file=sys.stderr)
        return 1
    print(json.dumps(tree, indent=1) if args.json else "\n".join(render(tree)))
    return 0

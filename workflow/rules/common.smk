import json
import os
from pathlib import Path

from lmforge import tracking
from lmforge.launch import job_resources
from lmforge.plan import (
    baseline_train_config,
    grow_train_config,
    pretrain_train_config,
)
from lmforge.warc_inputs import is_remote, warc_inputs
from lmforge.evaluate import workflow_task_specs
from lmforge.stats import ANALYSES as STATS_ANALYSES, PLOTS as STATS_PLOTS

R = config["results"]
SOURCE = config["crawl"]["name"]
MIX = config["tokenizer"]["mix"]
SEED = config["seed"]


def outside_file(path):
    """An input from outside the workflow: a URL through its storage plugin, else a file on
    this disk (kept local even when a default storage provider holds the results)."""
    return storage(path) if is_remote(path) else local(path)


def crawl_shards():
    """Shard name -> WARC input: the demo crawl's shards, or one per WARC file.

    WARC files are local paths or globs, URLs (http, https, s3: read through Snakemake's
    storage plugins), or the entries of a Common Crawl `warc.paths` manifest joined to
    `warc_base_url`."""
    crawl = config["crawl"]
    if crawl["source"] == "demo":
        n = crawl["demo"]["shards"]
        return {
            f"shard-{i:04d}": f"{R}/crawl/demo/shard-{i:04d}.warc.gz" for i in range(n)
        }
    paths = warc_inputs(
        crawl["warc_paths"],
        crawl.get("warc_manifest"),
        crawl.get("warc_base_url", ""),
        crawl.get("max_warcs"),
    )
    if not paths:
        raise ValueError(
            "crawl.source is 'warc' but crawl.warc_paths / warc_manifest give no file"
        )
    return {f"shard-{i:04d}": outside_file(p) for i, p in enumerate(paths)}


SHARDS = crawl_shards()


def cfg_json(*keys):
    """A config section as JSON: as a param it reruns a rule when that section changes."""
    value = config
    for key in keys:
        value = value[key]
    return json.dumps(value, sort_keys=True)


def code(*modules):
    """Source files a rule depends on, so editing a stage's code reruns that stage."""
    src = Path(workflow.basedir) / "src" / "lmforge"
    # local(): with a default storage provider (results on S3) the code stays on disk.
    return [local(str(src / f"{m}.py")) for m in ("storage",) + modules]


def docs(source=SOURCE):
    return [f"{R}/documents/{source}/{s}.jsonl.gz" for s in SHARDS]


def mixed(mix=MIX):
    """A mix: one directory of size-capped parts per documents shard."""
    return [f"{R}/mixes/{mix}/{s}" for s in SHARDS]


def launch_resources(stage):
    """A training job's nodes, tasks and GPUs from config["launch"] (see lmforge.launch)."""
    return job_resources(**config["launch"][stage])


def grown_factor(init, operator):
    """How much `init-grown` (the from-scratch baseline of the grown size) is scaled."""
    grow = config["grow"]
    return (
        grow["factor"] if init == "init-grown" and grow["operator"] == operator else 1
    )


def checkpoint_path(name):
    return f"{R}/checkpoints/{name}"


MIDTRAIN = config["midtrain"]
ANNEALS = [f"anneal-{MIDTRAIN['mix']}-s{seed}" for seed in MIDTRAIN["seeds"]]
CONTROL = f"anneal-{MIDTRAIN['control_mix']}-s{MIDTRAIN['seeds'][0]}"
MIDTRAIN_MODELS = ANNEALS + [f"soup-{MIDTRAIN['mix']}", CONTROL]
EVAL = config["evaluate"]
# The baseline is evaluated only where it is compared (it costs a pretraining run).
EVAL_MODELS = [
    m for m in EVAL["models"] if m != "baseline" or config["grow"]["compare_baseline"]
]
TASK_SPECS = workflow_task_specs(
    EVAL,
    tasks_dir=f"{R}/tasks",
    tokens_dir=f"{R}/tokens/{MIX}",
    heldout_docs=f"{R}/eval/heldout/{MIX}.jsonl.gz",
)


def task_inputs(wildcards):
    """The files a task reads: the workflow's own outputs or the files it names."""
    spec = TASK_SPECS[wildcards.task]
    if spec["kind"] == "token_perplexity":
        return {
            "task_data": f"{spec['path']}/valid.npy",
            "task_meta": f"{spec['path']}/meta.json",
        }
    own = spec["path"].startswith(f"{R}/")
    files = {"task_data": spec["path"] if own else outside_file(spec["path"])}
    if spec.get("shots_path"):
        files["task_shots"] = outside_file(spec["shots_path"])
    return files


def staged_spec(wildcards, input):
    """The task's spec with its paths at the job's inputs (staged copies when remote)."""
    spec = dict(TASK_SPECS[wildcards.task])
    if spec["kind"] == "token_perplexity":
        spec["path"] = os.path.dirname(input.task_data)
    else:
        spec["path"] = input.task_data
        if spec.get("shots_path"):
            spec["shots_path"] = input.task_shots
    return json.dumps(spec, sort_keys=True)


def final_targets():
    targets = [
        f"{R}/eval/summary.md",
        f"{R}/train/loss.png",
        f"{R}/eval/midtrain.md",
        f"{R}/stats/documents-{SOURCE}/summary.md",
    ]
    if config["grow"]["compare_baseline"]:
        targets.append(f"{R}/train/growth.md")
    targets += [f"{R}/mixes/{m}/funnel.md" for m in config["mixes"]]
    targets += [f"{R}/stats/mix-{m}/summary.md" for m in config["mixes"]]
    for pair in config["stats"]["overlap"]:
        a, b = (f"documents-{SOURCE}" if c == "documents" else c for c in pair)
        targets.append(f"{R}/stats/overlap/{a}__{b}/overlap.md")
    if config["crawl"]["source"] == "demo":
        targets.append(f"{R}/curation/demo/label_eval.md")
    return targets


def corpus_shards(wildcards, corpus=None):
    """Shards of a corpus named `documents-<source>` or `mix-<mix>`."""
    kind, name = (corpus or wildcards.corpus).split("-", 1)
    return docs(name) if kind == "documents" else mixed(name)


MLFLOW_URI = tracking.absolute_sqlite_uri(config["mlflow"]["tracking_uri"], os.getcwd())


onstart:
    tracking.start_invocation(config, os.getcwd(), workflow.basedir)


onsuccess:
    tracking.end_invocation(True)
    print(
        f"results: {Path(R).resolve()}  (evaluation summary: {R}/eval/summary.md)"
    )
    print(f"MLflow:  mlflow ui --backend-store-uri {MLFLOW_URI}")


onerror:
    tracking.end_invocation(False)

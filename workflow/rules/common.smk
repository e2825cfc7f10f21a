import json
import os
import re
import shlex
from pathlib import Path

from lmforge.codegraph import CodeGraph
from lmforge.data.dedup import METHODS as DEDUP_METHODS
from lmforge.data.minhash import NearDuplicates
from lmforge.data.decontam import Contamination
from lmforge.data.quality import QualityScores
from lmforge.data.taggers import TAGGERS as TAGGER_REGISTRY
from lmforge.io import tracking
from lmforge.io.duck import job_memory_mb
from lmforge.train.launch import job_resources
from lmforge.train.stages import (
    baseline_train_config,
    grow_train_config,
    pretrain_train_config,
)
from lmforge.data.warc_inputs import HUB_DATASETS, is_remote, warc_inputs
from lmforge.eval.specs import decontamination_specs, workflow_task_specs
from lmforge.stats.analyses import ANALYSES as STATS_ANALYSES, PLOTS as STATS_PLOTS

# Rules on the path to the models (the data half, tokens, training) have `priority: 1`: when
# cores are short they run first, and side jobs (statistics, reports, evaluation) fill the gaps.
R = config["results"]
CODE_GRAPH = CodeGraph(Path(workflow.basedir) / "src" / "lmforge")
SOURCE = config["crawl"]["name"]
MIX = config["tokenizer"]["mix"]
SEED = config["seed"]


def outside_file(path):
    """An input from outside the workflow: a URL through its storage plugin, else a file on
    this disk (kept local even when a default storage provider holds the results)."""
    return storage(path) if is_remote(path) else local(path)


def crawl_shards():
    """Shard name -> input file: the demo crawl's shards, one per WARC file, or one per file
    of a released corpus (source documents).

    Files are local paths or globs (a glob matching nothing is an error), URLs (http, https,
    s3: read through Snakemake's storage plugins), or for WARC files the entries of a Common
    Crawl `warc.paths` manifest joined to `warc_base_url`."""
    crawl = config["crawl"]
    if crawl["source"] == "demo":
        n = crawl["demo"]["shards"]
        return {
            f"shard-{i:04d}": f"{R}/crawl/demo/shard-{i:04d}.warc.gz" for i in range(n)
        }
    if crawl["source"] == "documents":
        paths = warc_inputs(
            crawl.get("document_paths", []), limit=crawl.get("max_files")
        )
    else:
        paths = warc_inputs(
            crawl["warc_paths"],
            crawl.get("warc_manifest"),
            crawl.get("warc_base_url", ""),
            crawl.get("max_warcs"),
        )
    if not paths:
        raise ValueError(
            f"crawl.source is {crawl['source']!r} but its paths give no file"
        )
    shards = {}
    for i, path in enumerate(paths):
        shard = f"shard-{i:04d}"
        if path.startswith(HUB_DATASETS):
            # Fetched by rule fetch_hub_dataset; the name keeps the file's format suffixes.
            local = f"{R}/hub/datasets/{shard}/{os.path.basename(path)}"
            HUB_DATASET_FILES[local] = path
            shards[shard] = local
        else:
            shards[shard] = outside_file(path)
    return shards


HUB_DATASET_FILES = {}  # local copy -> pinned hf:// URL of a Hub dataset file


SHARDS = crawl_shards()
# A dedup bucket job's memory: what the config lets DuckDB use, plus Python's share.
DEDUP_MEM_MB = job_memory_mb(config["curate"]["dedup"]["duckdb"]["memory_limit"])
STATS_MEM_MB = job_memory_mb(config["stats"]["duckdb"]["memory_limit"])
# A shard's place in corpus order: dedup keeps the first occurrence in this order.
SHARD_INDEX = {name: index for index, name in enumerate(SHARDS)}


def cfg_json(*keys):
    """A config section as JSON: as a param it reruns a rule when that section changes."""
    value = config
    for key in keys:
        value = value[key]
    return json.dumps(value, sort_keys=True)


def code(*commands):
    """The source files the rule's `lmforge` commands import (lmforge.codegraph), so an edit
    to any of them reruns the rule, and an edit elsewhere does not."""
    files = {f for command in commands for f in CODE_GRAPH.command_sources(command)}
    # local(): with a default storage provider (results on S3) the code stays on disk.
    return [local(f) for f in sorted(files)]


def docs(source=SOURCE):
    return [f"{R}/documents/{source}/{s}.jsonl.gz" for s in SHARDS]


def mixed(mix=MIX):
    """A mix: one directory of size-capped parts per documents shard."""
    return [f"{R}/mixes/{mix}/{s}" for s in SHARDS]


def token_files(mix, split):
    """A mix's token files of one split, one per mix shard (listed in its meta.json)."""
    return [f"{R}/tokens/{mix}/parts/{s}.{split}.npy" for s in SHARDS]


def launch_resources(stage):
    """A training job's nodes, tasks and GPUs from config["launch"] (see lmforge.train.launch)."""
    return job_resources(**config["launch"][stage])


def grown_factor(init, operator):
    """How much `init-grown` (the from-scratch baseline of the grown size) is scaled."""
    grow = config["grow"]
    return (
        grow["factor"] if init == "init-grown" and grow["operator"] == operator else 1
    )


def checkpoint_path(name):
    return f"{R}/checkpoints/{name}"


# Post-training data: generated by rule instruct_data unless a stage names its own files
# (open-instruct's formats, e.g. the GSM8K RLVR file).
INSTRUCT_FILES = ["preference_train", "preference_valid", "rlvr_train", "rlvr_valid"]


def instruct_file(stage, split):
    path = config[stage].get(f"{split}_path")
    if path:
        return outside_file(path)
    kind = "preference" if stage == "dpo" else "rlvr"
    return f"{R}/instruct/{kind}_{split}.jsonl.gz"


MIDTRAIN = config["midtrain"]
ANNEALS = [f"anneal-{MIDTRAIN['mix']}-s{seed}" for seed in MIDTRAIN["seeds"]]
CONTROL = f"anneal-{MIDTRAIN['control_mix']}-s{MIDTRAIN['seeds'][0]}"
MIDTRAIN_MODELS = ANNEALS + [f"soup-{MIDTRAIN['mix']}", CONTROL]
EVAL = config["evaluate"]
# Hub models evaluated beside ours: name -> hf:<repo>@<revision>. Token perplexity is in the
# workflow's own tokens, so they run the tasks of every other kind.
HUB_MODELS = EVAL.get("hub_models", {})
# The baseline is evaluated only where it is compared (it costs a pretraining run).
EVAL_MODELS = [
    m for m in EVAL["models"] if m != "baseline" or config["grow"]["compare_baseline"]
]
# Every evaluated task: the summary's and mid-training's.
TASK_SPECS = workflow_task_specs(
    {**EVAL, "tasks": list(dict.fromkeys(EVAL["tasks"] + MIDTRAIN["tasks"]))},
    tasks_dir=f"{R}/tasks",
    tokens_dir=f"{R}/tokens/{MIX}",
    heldout_docs=f"{R}/eval/heldout/{MIX}.jsonl.gz",
)


HUB_TASKS = [t for t in EVAL["tasks"] if TASK_SPECS[t]["kind"] != "token_perplexity"]
OWN_MODELS = [
    "init",
    "pretrain",
    "init-grown",
    "grow",
    "baseline",
    "sft",
    "dpo",
    "rlvr",
]
# A released model to start from instead of a random init (its tokenizer replaces ours);
# fetched as the Hub model "start".
START = config["start_from"]
if set(HUB_MODELS) & set(OWN_MODELS + MIDTRAIN_MODELS + ["start"]):
    raise ValueError(
        f"evaluate.hub_models names {sorted(set(HUB_MODELS) & set(OWN_MODELS + ['start']))}, "
        "which the workflow's own checkpoints use: give the Hub models other names"
    )
HUB_REFS = {**HUB_MODELS, **({"start": START} if START else {})}


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# The stages each checkpoint went through, for the tokens it has seen (publish's card).
BASE_STAGES = {"init": [], "pretrain": ["pretrain"], "grow": ["pretrain", "grow"]}
SFT_STAGES = BASE_STAGES[config["sft"]["from"]] + ["sft"]
MODEL_STAGES = {
    "pretrain": ["pretrain"],
    "baseline": ["baseline"],
    "grow": ["pretrain", "grow"],
    "sft": SFT_STAGES,
    "dpo": SFT_STAGES + ["dpo"],
    "rlvr": SFT_STAGES + ["dpo", "rlvr"],
}
PUBLISH = config["publish"]


def publish_inputs(wildcards):
    if not PUBLISH["repo"]:
        raise ValueError(f"set publish.repo (org/name) to publish {wildcards.model}")
    return {
        "checkpoint": checkpoint_path(wildcards.model),
        "metrics": [
            f"{R}/train/{s}/metrics.csv" for s in MODEL_STAGES[wildcards.model]
        ],
        "tokenizer": f"{R}/tokenizer/{MIX}/tokenizer.json",
        "funnel": f"{R}/mixes/{MIX}/funnel.md",
        "evaluation": f"{R}/eval/summary.md",
        **({"start": f"{R}/hub/models/start.json"} if START else {}),
    }


# The tasks decontamination and the contamination analysis look for (lmforge.eval.specs).
DECONTAM_SPECS = decontamination_specs(EVAL, f"{R}/tasks")


def decontam_task_inputs(wildcards):
    """The files of every task the corpus is cleaned against, one input each."""
    return {
        f"task_{name}": (
            spec["path"]
            if spec["path"].startswith(f"{R}/")
            else outside_file(spec["path"])
        )
        for name, spec in DECONTAM_SPECS.items()
    }


def decontam_specs(wildcards, input):
    """Those tasks' specs with their paths at the job's inputs (staged copies when remote)."""
    return json.dumps(
        {
            name: {**spec, "path": input[f"task_{name}"]}
            for name, spec in DECONTAM_SPECS.items()
        },
        sort_keys=True,
    )


def task_inputs(wildcards):
    """The files a task reads: the workflow's own outputs or the files it names."""
    spec = TASK_SPECS[wildcards.task]
    if spec["kind"] == "token_perplexity":
        mix = os.path.basename(spec["path"])
        return {
            "task_data": token_files(mix, "valid"),
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
        spec["path"] = os.path.dirname(input.task_meta)
    else:
        spec["path"] = input.task_data
        if spec.get("shots_path"):
            spec["shots_path"] = input.task_shots
    return json.dumps(spec, sort_keys=True)


VISION = config["vision"]


def vlm_stage(stage):
    """Inputs of a vision training stage: where it starts, and its training settings."""
    start = {
        "caption": checkpoint_path(VISION["lm"]),
        "finetune": checkpoint_path("vlm-caption"),
        "text_only": checkpoint_path(VISION["lm"]),
    }[stage]
    datasets = ["pixmo_cap"] if stage == "caption" else VISION["finetune"]["datasets"]
    section = "caption" if stage == "caption" else "finetune"
    return start, " ".join(datasets), cfg_json("vision", section, "train")


def final_targets():
    targets = [
        f"{R}/eval/summary.md",
        f"{R}/train/loss.png",
        f"{R}/eval/midtrain.md",
        f"{R}/eval/posttrain.md",
        f"{R}/eval/promptability.md",
        f"{R}/eval/vision.md",
        f"{R}/train/vision_loss.png",
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


def corpus_shard(corpus, shard):
    """One shard of a corpus: a documents file, or a mix shard's directory of parts."""
    kind, name = corpus.split("-", 1)
    return (
        f"{R}/documents/{name}/{shard}.jsonl.gz"
        if kind == "documents"
        else (f"{R}/mixes/{name}/{shard}")
    )


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

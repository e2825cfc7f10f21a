"""Evaluation over a models × tasks matrix (Catwalk's design): any model behind
`lmforge.eval.lm.LanguageModel`, any task behind `lmforge.eval.tasks.TaskSpec`.

Each (model, task) pair writes one JSON — metrics and every instance's prediction — so that in
the Snakemake DAG each pair is its own target; the summary (parquet, JSON and markdown) holds one
row per pair with the task's primary metric, its standard error and 95% bootstrap interval, and,
when the stats stage measured it, the share of the task's items found in the training mix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from lmforge.eval.lm import LanguageModel, load
from lmforge.eval.specs import TaskSpec
from lmforge.eval.tasks import run_task
from lmforge.io.hub import HUB_RECORD_KEYS, fetch_model, is_hub_model
from lmforge.io.storage import InputError, atomic_path, read_json, write_json, write_text
from lmforge.runner import OUT, OUT_DIR, OUT_JSON, OUT_MD, arg, command, json_object

WORKFLOW_TASKS = ("heldout_ppl", "heldout_domains", "reference_bpb", "cloze_mc", "arith_gen")


def open_model(ref: str, tokenizer, name: str, batch_size: int
               ) -> tuple[LanguageModel, dict | None]:
    """A model by path, by Hub reference (`hf:<repo>@<revision>`, fetched), or by the record
    `fetch-hub-model` wrote; with its Hub source (repo, revision, commit) when it has one."""
    source = None
    if is_hub_model(ref):
        source = fetch_model(ref)
    elif ref.endswith(".json"):
        source = read_json(ref)
        if not isinstance(source, dict) or not HUB_RECORD_KEYS <= set(source):
            raise InputError(f"{ref}: not a record of `lmforge fetch-hub-model`")
    model = load(source["path"] if source else ref, tokenizer, name, batch_size)
    return model, ({k: source[k] for k in ("repo", "revision", "commit")} if source else None)


def check_task_fits(spec: TaskSpec, source: dict | None) -> None:
    if source and spec.kind == "token_perplexity":
        raise InputError(f"{spec.name}: token perplexity reads the workflow's token files, made "
                         f"with its tokenizer; {source['repo']} has its own. Use a bits-per-byte "
                         "task (heldout_domains, reference_bpb) to compare it")


def evaluate_pair(model: LanguageModel, spec: TaskSpec, out: str | Path,
                  progress: bool = False, source: dict | None = None) -> dict:
    """One (model, task) result, naming the Hub commit it scored when the model is one."""
    check_task_fits(spec, source)
    result = run_task(model, spec, progress)
    if source:
        result["hub"] = source
    write_json(out, result)
    return result


def read_contamination(paths: list[str | Path]) -> dict[str, dict]:
    """Task → shares of its items found in the corpus (stats' `contamination.parquet`)."""
    import pyarrow.parquet as pq

    shares: dict[str, dict] = {}
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            shares[row["task"]] = {"contamination_ngram": row["share_ngram"],
                                   "contamination_exact": row["share_exact"]}
    return shares


def summary_rows(results: list[dict], contamination: dict[str, dict] | None = None
                 ) -> list[dict]:
    rows = []
    for result in results:
        metrics, metric = result["metrics"], result["primary_metric"]
        ci = metrics.get(f"{metric}_ci95") or [None, None]
        rows.append({
            "model": result["model"], "task": result["task"], "kind": result["kind"],
            "hub_commit": result.get("hub", {}).get("commit"),
            "metric": metric, "value": metrics[metric],
            "stderr": metrics.get(f"{metric}_stderr"), "ci95_low": ci[0], "ci95_high": ci[1],
            "instances": next(metrics[k] for k in ("instances", "documents", "tokens")
                              if k in metrics),
            **(contamination or {}).get(result["task"],
                                         {"contamination_ngram": None,
                                          "contamination_exact": None}),
            **{k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not k.endswith("_stderr")},
        })
    return rows


def _cell(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g} ± {stderr:.2g}" if stderr else f"{value:.4g}"


def domain_markdown(results: list[dict]) -> str:
    """Bits per byte per domain of every perplexity task (Paloma's breakdown)."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in results if r["kind"] == "perplexity"):
        rows = [r for r in results if r["task"] == task]
        domains = sorted({d for r in rows for d in r["metrics"]["domains"]})
        lines += ["", f"Bits per byte by domain, {task}:", "",
                  "| model | " + " | ".join(domains) + " |", "| --- |" + " ---: |" * len(domains)]
        for r in rows:
            cells = [f"{r['metrics']['domains'][d]['bits_per_byte']:.3f}"
                     if d in r["metrics"]["domains"] else "–" for d in domains]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


def summary_markdown(rows: list[dict]) -> str:
    """One row per model, each task's primary metric (± standard error) as a column; then
    the tasks' metrics, intervals and contamination."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by_key = {(r["model"], r["task"]): r for r in rows}
    metric = {r["task"]: r["metric"] for r in rows}
    lines = ["| model | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " |",
             "| --- |" + " ---: |" * len(tasks)]
    for model in models:
        cells = [_cell(by_key[(model, t)]["value"], by_key[(model, t)]["stderr"])
                 if (model, t) in by_key else "–" for t in tasks]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "| model | task | instances (tokens) | 95% interval | items in the training mix "
              "(13-gram / exact) |", "| --- | --- | ---: | --- | --- |"]
    for r in rows:
        interval = (f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]"
                    if r["ci95_low"] is not None else "–")
        contamination = (f"{r['contamination_ngram']:.1%} / {r['contamination_exact']:.1%}"
                         if r["contamination_ngram"] is not None else "not measured")
        lines.append(f"| {r['model']} | {r['task']} | {r['instances']} | {interval} | "
                     f"{contamination} |")
    return "\n".join(lines) + "\n"


def write_summary(results: list[dict], out_md: str | Path, out_parquet: str | Path,
                  out_json: str | Path, contamination: dict[str, dict] | None = None) -> str:
    import polars as pl

    rows = summary_rows(results, contamination)
    table = summary_markdown(rows) + domain_markdown(results)
    write_text(out_md, "# Evaluation summary\n\n" + table)
    write_json(out_json, rows)
    # Typed, so a column with no value (no contamination measured, no Hub model) keeps its type.
    text, number = pl.String, pl.Float64
    schema = {"model": text, "task": text, "kind": text, "metric": text, "value": number,
              "stderr": number, "ci95_low": number, "ci95_high": number, "instances": pl.Int64,
              "contamination_ngram": number, "contamination_exact": number, "hub_commit": text}
    with atomic_path(out_parquet) as tmp:
        pl.DataFrame([{c: r[c] for c in schema} for r in rows], schema=schema).write_parquet(tmp)
    return table


def load_results(paths: list[str | Path]) -> list[dict]:
    return [read_json(p) for p in paths]


log = logging.getLogger(__name__)
BATCH_SIZE = arg("--batch-size", type=int, default=16)


@command("evaluate", arg("--model"), arg("--model-name"), arg("--tokenizer", default=None),
         arg("--task"), arg("--spec", type=json_object), BATCH_SIZE, OUT,
         job=lambda args: f"evaluate/{args.model_name}/{args.task}",
         params=lambda args: {"task": args.task, **args.spec},
         inputs=("model", "tokenizer", "task_files"), outputs=("out",), artifacts=("out",))
def evaluate_command(args, job) -> dict:
    """Evaluate one model on one task: metrics and every instance's prediction as JSON."""
    import torch

    torch.manual_seed(0)
    spec = TaskSpec.from_config(args.task, args.spec)
    if spec.kind == "token_perplexity":
        from lmforge.data.tokenize import token_files

        args.task_files = token_files(spec.path)
    else:
        args.task_files = [p for p in (spec.path, spec.shots_path) if p]
    model, source = open_model(args.model, args.tokenizer, args.model_name, args.batch_size)
    if source:
        job.set_tags({f"hub.{k}": v for k, v in source.items()})
    result = evaluate_pair(model, spec, args.out, progress=True, source=source)
    metrics = result["metrics"]
    log.info("%s on %s: %s = %s", args.model_name, args.task, result["primary_metric"],
             metrics[result["primary_metric"]])
    return {f"{args.task}.{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}


@command("eval-summary", arg("--inputs", nargs="+"), arg("--contamination", nargs="*"), OUT_MD,
         arg("--out-parquet"), OUT_JSON, job="eval_summary",
         inputs=("inputs", "contamination"), outputs=("out_md", "out_parquet", "out_json"),
         artifacts=("out_md",))
def eval_summary_command(args, job) -> None:
    """One table of every (model, task) result, with uncertainty and contamination."""
    print(write_summary(load_results(args.inputs), args.out_md, args.out_parquet, args.out_json,
                        read_contamination(args.contamination or [])))


@command("evaluate-matrix", arg("--models", nargs="+"), arg("--tokenizer", default=None),
         arg("--tasks"), BATCH_SIZE, OUT_DIR, job="evaluate_matrix",
         params=lambda args: {"models": [m.partition("=")[0] for m in args.models]},
         inputs=("models", "tokenizer", "tasks"), outputs=("out_dir",))
def evaluate_matrix_command(args, job) -> None:
    """Every model on every task of a task file (YAML or JSON: name → spec), then the
    summary: `<out-dir>/<model>/<task>.json`, `<out-dir>/summary.{md,parquet,json}`."""
    import torch

    try:
        task_cfg = yaml.safe_load(Path(args.tasks).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{args.tasks}: not a readable task file ({err})") from None
    if not isinstance(task_cfg, dict) or not task_cfg:
        raise InputError(f"{args.tasks}: expected a mapping of task name → spec")
    specs = [TaskSpec.from_config(name, spec) for name, spec in task_cfg.items()]
    models = {}
    for item in args.models:
        name, _, path = item.partition("=")
        if not path:
            raise InputError(f"--models takes NAME=PATH, got {item!r}")
        models[name] = path
    out = Path(args.out_dir)
    results = []
    for name, path in models.items():
        torch.manual_seed(0)
        model, source = open_model(path, args.tokenizer, name, args.batch_size)
        if source:
            job.log_params({f"{name}.hub": source})
        for spec in specs:
            result = evaluate_pair(model, spec, out / name / f"{spec.name}.json", True,
                                   source)
            results.append(result)
            job.log_metrics({f"{name}.{spec.name}.{result['primary_metric']}":
                             result["metrics"][result["primary_metric"]]})
    print(write_summary(results, out / "summary.md", out / "summary.parquet",
                        out / "summary.json"))
    job.log_artifact(out / "summary.md")

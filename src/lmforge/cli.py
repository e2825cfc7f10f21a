"""`lmforge <stage>`: one subcommand per workflow rule; each logs to MLflow as a child run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from lmforge.launch import LaunchError
from lmforge.storage import InputError, document_files, write_json, write_text

log = logging.getLogger("lmforge")
TRAINING_COMMANDS = ("pretrain", "grow", "sft", "dpo", "rlvr", "promptable", "vlm")


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _job(name: str, params: dict | None = None):
    from lmforge.tracking import job_run

    return job_run(name, params)


def cmd_warmup(args) -> None:
    """Build DeepSpeed's CPU ops once (about a minute), so jobs and tests don't pay it."""
    import torch

    from lmforge.model import ModelConfig, Olmo2
    from lmforge.train import train

    cfg = {"steps": 1, "micro_batch_size": 1, "grad_accum": 1, "lr": 1e-3, "min_lr_ratio": 0.1,
           "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1.0, "zero_stage": 0,
           "precision": "fp32", "log_every": 1}
    model = Olmo2(ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, mlp_hidden=8,
                              max_seq_len=8))
    data = torch.zeros(1, 8, dtype=torch.long)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        train(model, lambda s, m: (data[:, :-1], data[:, 1:]), cfg, 0, out / "ckpt", out / "m.csv")
    print("DeepSpeed CPU ops are built")


def cmd_launch(args) -> int:
    """Run a training command as SLURM (srun) or torchrun would start its processes."""
    from lmforge.launch import launch

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    return launch(command, args.processes, args.nodes)


def cmd_make_tasks(args) -> None:
    from lmforge.tasks import make_tasks

    with _job("make_tasks", args.cfg) as run:
        run.log_metrics({f"items.{k}": v for k, v in make_tasks(args.out_dir, args.cfg).items()})


def cmd_crawl_demo(args) -> None:
    from lmforge.democrawl import write_demo_crawl

    with _job("crawl_demo", {**args.cfg, "seed": args.seed}) as run:
        counts = write_demo_crawl(args.out_dir, args.cfg, args.tasks_dir, args.seed)
        log.info("demo crawl: %s", counts)
        run.log_metrics({f"records.{k}": v for k, v in counts.items()})
        run.log_artifact(Path(args.out_dir) / "labels.jsonl.gz")


def cmd_extract(args) -> None:
    from lmforge.extract import extract

    with _job(f"extract/{Path(args.out).name}", {"warc": args.warc, "source": args.source}) as run:
        result = extract(args.warc, args.out, args.source)
        write_json(args.report, result)
        run.log_metrics({"documents": result["documents"],
                         **{f"skipped.{k}": v for k, v in result["skipped"].items()}})


def cmd_tag(args) -> None:
    from lmforge.taggers import run_tagger

    name = f"tag/{args.tagger}/{Path(args.out).name}"
    with _job(name, {"tagger": args.tagger, **args.cfg}) as run:
        run.log_metrics(run_tagger(args.tagger, args.docs, args.out, args.cfg))


def cmd_dedup(args) -> None:
    from lmforge.dedup import dedup

    with _job(f"dedup/{args.method}", {"method": args.method, "shards": len(args.docs)}) as run:
        stats = dedup(args.method, args.docs, args.out)
        log.info("%s: %s", args.method, stats)
        run.log_metrics(stats)


def cmd_dedup_paragraphs(args) -> None:
    from lmforge.dedup import dedup_paragraphs

    with _job("dedup/dedup_para", args.cfg) as run:
        stats = dedup_paragraphs(args.docs, args.out, args.cfg)
        log.info("paragraph dedup: %s", stats)
        run.log_metrics(stats)


def cmd_minhash(args) -> None:
    from lmforge.dedup import minhash_signatures

    with _job(f"minhash/{Path(args.out).name}", args.cfg) as run:
        run.log_metrics(minhash_signatures(args.docs, args.out, args.cfg))


def cmd_dedup_minhash(args) -> None:
    from lmforge.dedup import dedup_minhash

    with _job("dedup/dedup_minhash", args.cfg) as run:
        stats = dedup_minhash(args.signatures, args.docs, args.out, args.cfg)
        log.info("minhash dedup: %s", stats)
        run.log_metrics(stats)


def cmd_decontam(args) -> None:
    from lmforge.decontam import decontaminate

    with _job(f"decontam/{Path(args.out).name}", args.cfg) as run:
        run.log_metrics(decontaminate(args.docs, args.tasks_dir, args.out, args.cfg))


def cmd_train_quality(args) -> None:
    from lmforge.quality import train_classifier

    with _job("train_quality", {**args.cfg, "seed": args.seed}) as run:
        metrics = train_classifier(args.docs, args.out, args.cfg, args.seed)
        log.info("quality classifier: %s", metrics)
        write_json(args.metrics, metrics)
        run.log_metrics(metrics)


def cmd_tag_quality(args) -> None:
    from lmforge.quality import tag_quality

    with _job(f"tag/quality/{Path(args.out).name}") as run:
        run.log_metrics(tag_quality(args.docs, args.model, args.out))


def cmd_label_eval(args) -> None:
    from lmforge.labeleval import evaluate_labels, markdown

    shards = len(args.docs)
    attrs = {}
    for path in args.attributes:
        attrs.setdefault(Path(path).parent.parent.name, []).append(path)
    if any(len(paths) != shards for paths in attrs.values()):
        raise ValueError("every attribute set needs one file per documents shard")
    with _job("label_eval") as run:
        results = evaluate_labels(args.labels, args.docs, attrs)
        write_json(args.out_json, results)
        write_text(args.out_md, "# Curation against the demo crawl's labels\n\n"
                   + markdown(results))
        run.log_metrics({k: v for k, v in results.items() if k != "pii"})
        run.log_artifact(args.out_md)


def cmd_mix(args) -> None:
    from lmforge.mix import mix_shard

    with _job(f"mix/{Path(args.out).parent.name}/{Path(args.out).name}", args.cfg) as run:
        funnel = mix_shard(args.docs, args.attributes, args.out, args.funnel, args.cfg)
        log.info("funnel: %s", funnel)
        run.log_metrics({k.replace(":", "."): v for k, v in funnel.items()})


def cmd_funnel(args) -> None:
    from lmforge.mix import summarize_funnel

    with _job(f"funnel/{Path(args.out_md).parent.name}") as run:
        total, table = summarize_funnel(args.inputs, args.cfg["exclude"])
        write_json(args.out_json, total)
        write_text(args.out_md, table)
        run.log_metrics({k.replace(":", "."): v for k, v in total.items()})
        run.log_artifact(args.out_md)


def cmd_stats(args) -> None:
    """WIMBD analyses of one corpus (DuckDB), with plots and a summary."""
    from lmforge.stats import PLOTS, corpus_stats

    with _job(f"stats/{Path(args.out_dir).name}", args.cfg) as run:
        summary = corpus_stats(args.docs, args.out_dir, args.cfg, tokenizer=args.tokenizer,
                               tasks_dir=args.tasks_dir, lang_paths=args.lang_attributes)
        log.info("stats: %s", summary)
        run.log_metrics({k: v for k, v in summary.items() if v is not None})
        for name in ("summary.md", *(f"{plot}.png" for plot in PLOTS)):
            run.log_artifact(Path(args.out_dir) / name)


def cmd_overlap(args) -> None:
    """Share of each corpus's texts and URLs found in the other."""
    from lmforge.stats import corpus_overlap

    args.b = document_files(args.b)
    with _job(f"overlap/{Path(args.out_dir).name}") as run:
        names = tuple(Path(args.out_dir).name.split("__", 1))
        result = corpus_overlap(args.docs, args.b, args.out_dir, args.cfg,
                                names if len(names) == 2 else ("a", "b"))
        log.info("overlap: %s", result)
        run.log_metrics(result)


def cmd_plan(args) -> None:
    """Memory per device and FLOPs of a training run, or of every training stage of a workflow
    config (--configfile); error if it cannot fit."""
    from lmforge.hf import preset_config
    from lmforge.plan import GIB, check_fits, device_memory_bytes, estimate, markdown

    if args.configfile:
        return _plan_workflow(args)
    if (args.preset is None) == (args.checkpoint is None) or args.cfg is None:
        raise ValueError("give --cfg and exactly one of --preset or --checkpoint, or "
                         "--configfile")
    if args.preset:
        model_cfg = preset_config(args.preset)
    else:
        from lmforge.checkpoint import load_model

        model_cfg = load_model(args.checkpoint).cfg
    from lmforge.train import resolve_batch

    plan = estimate(model_cfg, resolve_batch(args.cfg, args.world_size), args.world_size)
    print(markdown(plan), end="")
    memory = (args.device_memory_gib * GIB if args.device_memory_gib
              else device_memory_bytes("cuda" if _has_cuda() else "cpu"))
    check_fits(plan, int(memory))


def _plan_workflow(args) -> None:
    from lmforge.plan import GIB, check_fits, merged_config, workflow_markdown, workflow_plan

    base = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    config = merged_config(args.configfile, base)
    rows = workflow_plan(config, args.mfu)
    print(workflow_markdown(rows, args.mfu), end="")
    if args.target_loss:
        from lmforge.plan import staged_plan

        print("\n" + staged_plan(config, args.target_loss), end="")
    for row in rows:
        memory = args.device_memory_gib or row["gpu_memory_gib"]
        if memory is None:  # a CPU job: the trainer checks the machine it runs on
            continue
        try:
            check_fits(row, int(memory * GIB))
        except InputError as err:
            raise InputError(f"{row['stage']}: {err}") from None
        print(f"{row['stage']}: fits a {memory:g} GiB GPU")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_export_hf(args) -> None:
    """Write a checkpoint in Hugging Face format (Olmo2ForCausalLM / OlmoeForCausalLM)."""
    from lmforge.checkpoint import load_model
    from lmforge.hf import export_hf

    export_hf(load_model(args.checkpoint), args.out, tokenizer=args.tokenizer)
    log.info("exported %s to %s", args.checkpoint, args.out)


def cmd_search(args) -> None:
    """Count (and list) the documents holding an exact phrase or matching a regex."""
    from lmforge.stats import search

    result = search(args.docs, args.cfg, phrase=args.phrase, regex=args.regex, limit=args.limit)
    print(json.dumps(result, indent=2, ensure_ascii=False))


def cmd_train_tokenizer(args) -> None:
    from lmforge.tokenize import train_tokenizer

    params = {"vocab_size": args.vocab_size, "seed": args.seed,
              "valid_fraction": args.valid_fraction}
    with _job("train_tokenizer", params) as run:
        run.log_metrics(train_tokenizer(args.docs, args.out, args.vocab_size, args.seed,
                                        args.valid_fraction))


def cmd_tokenize(args) -> None:
    from lmforge.tokenize import tokenize_corpus

    with _job("tokenize", {"seed": args.seed, "valid_fraction": args.valid_fraction}) as run:
        meta = tokenize_corpus(args.docs, args.tokenizer, args.out_dir, args.seed,
                               args.valid_fraction)
        log.info("tokens: %s", meta)
        run.log_metrics(meta["splits"])


def cmd_init_model(args) -> None:
    from lmforge.checkpoint import init_model, save_model
    from lmforge.storage import atomic_dir, read_json

    vocab = read_json(args.tokens_meta)["vocab_size"]
    layers = args.cfg["n_layers"] * args.layers_factor
    params = {**args.cfg, "n_layers": layers, "width_factor": args.width_factor, "seed": args.seed}
    with _job(f"init/{Path(args.out).name}", params) as run:
        model = init_model(args.cfg, vocab, args.seed, n_layers=layers,
                           width_factor=args.width_factor)
        with atomic_dir(args.out) as tmp:
            save_model(model, tmp)
        run.log_metrics({"params": model.num_params(non_embedding=False),
                         "non_embedding_params": model.num_params()})


def _train_job(name: str, model, batches, args, extra_params: dict, extra_metrics: dict,
               **train_args):
    from lmforge.train import train

    if int(os.environ.get("RANK", 0)) != 0:
        # One MLflow run per job: rank 0 logs what the ranks reduce together.
        train(model, batches, args.cfg, args.seed, args.out, args.metrics, **train_args)
        return
    with _job(name, {**args.cfg, **extra_params, "seed": args.seed}) as run:
        run.log_metrics({"params": model.num_params(non_embedding=False), **extra_metrics})
        summary = train(model, batches, args.cfg, args.seed, args.out, args.metrics, tracker=run,
                        **train_args)
        run.log_metrics({f"summary.{k}": v for k, v in summary.items()})
        run.log_artifact(args.metrics)


def _token_batches(tokens_dir: str, model, cfg: dict, seed: int, first_instance: int = 0):
    from lmforge.tokenize import open_tokens
    from lmforge.train import instance_batches

    tokens = open_tokens(Path(tokens_dir) / "train.npy", Path(tokens_dir) / "meta.json")
    return instance_batches(tokens, model.cfg.max_seq_len, cfg, seed, *_rank_and_world(),
                            first_instance=first_instance)


def _heldout(tokens_dir: str, model, cfg: dict):
    """The in-loop held-out loss over the mix's valid split, when `eval_every` asks for it."""
    from lmforge.tokenize import open_tokens
    from lmforge.train import heldout_loss_fn

    if not cfg.get("eval_every"):
        return None
    tokens = open_tokens(Path(tokens_dir) / "valid.npy", Path(tokens_dir) / "meta.json")
    return heldout_loss_fn(tokens, model.cfg.max_seq_len, cfg.get("eval_instances", 64),
                           cfg["micro_batch_size"])


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def cmd_pretrain(args) -> None:
    from lmforge.checkpoint import load_model

    model = load_model(args.init)
    batches = _token_batches(args.tokens_dir, model, args.cfg, args.seed)
    _train_job(args.job_name, model, batches, args, {"init": args.init}, {},
               heldout=_heldout(args.tokens_dir, model, args.cfg))


def cmd_grow(args) -> None:
    import torch

    from lmforge.checkpoint import load_model, load_moments
    from lmforge.grow import OPERATORS, TrainingState
    from lmforge.model import causal_lm_loss
    from lmforge.storage import read_json

    small = load_model(args.checkpoint)
    moments, step = load_moments(args.checkpoint)
    width = {"noise": args.width_noise, "seed": args.seed} if args.operator == "width" else {}
    state = OPERATORS[args.operator](TrainingState(small, moments, step), args.factor, **width)
    grown = state.model
    # The grown model continues the small one's data order where it stopped.
    small_state = read_json(Path(args.checkpoint) / "trainer_state.json")
    if "next_instance" not in small_state:
        raise InputError(f"{args.checkpoint} does not record where its data order stopped; "
                         "train it again with this version of lmforge")
    first_instance = small_state["next_instance"]
    batches = _token_batches(args.tokens_dir, grown, args.cfg, small_state["seed"],
                             first_instance)
    probe_inputs, probe_labels = batches(0, 0)
    with torch.no_grad():
        loss_before = causal_lm_loss(small(probe_inputs), probe_labels).item()
        loss_after = causal_lm_loss(grown(probe_inputs), probe_labels).item()
    log.info("growth %s x%d: loss %.6f -> %.6f", args.operator, args.factor, loss_before,
             loss_after)
    # Both operators preserve the function (the width noise cancels over the identical copies
    # it reads), so only float rounding may change the loss: 1e-4 of it (absolute below 1).
    if abs(loss_before - loss_after) > 1e-4 * max(1.0, abs(loss_before)):
        raise RuntimeError(f"growth changed the loss: {loss_before:.6f} -> {loss_after:.6f}")
    _train_job("grow", grown, batches, args,
               {"operator": args.operator, "factor": args.factor, "from": args.checkpoint},
               {"grow.loss_before": loss_before, "grow.loss_after": loss_after}, start=state,
               heldout=_heldout(args.tokens_dir, grown, args.cfg), first_instance=first_instance)


def cmd_soup(args) -> None:
    """Average checkpoints' weights uniformly (a model soup of mid-training runs)."""
    from lmforge.checkpoint import save_model, soup
    from lmforge.storage import atomic_dir

    with _job(f"soup/{Path(args.out).name}", {"ingredients": args.checkpoints}) as run:
        model = soup(args.checkpoints)
        with atomic_dir(args.out) as tmp:
            save_model(model, tmp)
        run.log_metrics({"ingredients": len(args.checkpoints)})


def cmd_sft_data(args) -> None:
    from lmforge.sft import make_sft_data

    with _job("sft_data", args.cfg) as run:
        run.log_metrics(make_sft_data(args.mixes, args.out, args.cfg, args.tasks_cfg, args.seed,
                                      args.valid_fraction))


def cmd_sft(args) -> None:
    from lmforge.checkpoint import load_model
    from lmforge.sft import sft_batches
    from lmforge.tokenize import load_tokenizer

    model = load_model(args.checkpoint)
    batches, info = sft_batches(load_tokenizer(args.tokenizer), args.data, model.cfg.max_seq_len,
                                args.cfg, args.seed, *_rank_and_world())
    log.info("sft data: %s", info)
    _train_job("sft", model, batches, args, {"from": args.checkpoint},
               {f"data.{k}": v for k, v in info.items()})


def cmd_instruct_data(args) -> None:
    """Preference pairs and RLVR prompts for training and held out (lmforge.instruct)."""
    from lmforge.instruct import make_posttrain_data

    with _job("instruct_data", args.cfg) as run:
        run.log_metrics(make_posttrain_data(args.mixes, args.out_dir, args.cfg, args.tasks_cfg,
                                            args.seed, args.valid_fraction))


def cmd_dpo(args) -> None:
    """DPO from a checkpoint (the frozen reference is the same checkpoint)."""
    from lmforge import dpo
    from lmforge.checkpoint import load_model
    from lmforge.instruct import read_records
    from lmforge.tokenize import PAD, load_tokenizer

    model = load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer)
    pad, average = tokenizer.token_to_id(PAD), dpo.check_loss_type(args.cfg)
    # Inputs drop the last token; max_seq_len caps the pairs kept (Tulu 3: 2048).
    max_len = min(model.cfg.max_seq_len, args.cfg.get("max_seq_len", model.cfg.max_seq_len)) + 1
    train_pairs, too_long = dpo.encode_pairs(tokenizer, read_records(args.train, "preference"),
                                             max_len)
    valid_pairs, _ = dpo.encode_pairs(tokenizer, read_records(args.valid, "preference"), max_len)
    log.info("reference log-probabilities of %d + %d pairs", len(train_pairs), len(valid_pairs))
    reference = dpo.reference_logps(model, train_pairs, pad, average)
    valid_reference = dpo.reference_logps(model, valid_pairs, pad, average)
    batches = dpo.preference_batches(train_pairs, reference, pad, args.cfg, args.seed,
                                     *_rank_and_world())
    _train_job("dpo", model, batches, args, {"from": args.checkpoint},
               {"data.pairs": len(train_pairs), "data.skipped_too_long": too_long,
                "data.valid_pairs": len(valid_pairs)},
               objective=dpo.objective,
               heldout=dpo.heldout_fn(valid_pairs, valid_reference, pad, args.cfg))


def cmd_rlvr(args) -> None:
    """RLVR with GRPO from a checkpoint (also the frozen KL reference)."""
    from lmforge import rlvr
    from lmforge.checkpoint import load_model
    from lmforge.instruct import read_records
    from lmforge.tokenize import EOS, PAD, load_tokenizer

    if args.cfg["zero_stage"] == 3:
        raise ValueError("rlvr samples from the policy's whole weights on each process: "
                         "zero_stage 3 (sharded parameters) is not supported, use 1 or 2")
    model, reference = load_model(args.checkpoint), load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer)
    eos, pad = tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD)
    records, valid = read_records(args.train, "rlvr"), read_records(args.valid, "rlvr")
    _train_job("rlvr", model, rlvr.prompt_batches(records, args.cfg, args.seed,
                                                  *_rank_and_world()),
               args, {"from": args.checkpoint}, {"data.prompts": len(records)},
               objective=rlvr.grpo_objective(reference, tokenizer, eos, pad),
               heldout=rlvr.heldout_fn(tokenizer, valid, eos, pad, args.cfg["max_new_tokens"]))


def cmd_posttrain_report(args) -> None:
    """Held-out verifiable accuracy and preference statistics of the post-training chain."""
    from lmforge import dpo, posttrain_report
    from lmforge.checkpoint import load_model
    from lmforge.instruct import read_records
    from lmforge.tokenize import EOS, PAD, load_tokenizer

    models = {}
    for item in args.models:
        name, _, path = item.partition("=")
        models[name] = load_model(path)
    tokenizer = load_tokenizer(args.tokenizer)
    max_len = next(iter(models.values())).cfg.max_seq_len + 1
    pairs, _ = dpo.encode_pairs(tokenizer, read_records(args.preference_valid, "preference"),
                                max_len)
    with _job("posttrain_report", args.cfg) as run:
        report = posttrain_report.evaluate(
            models, tokenizer, read_records(args.rlvr_valid, "rlvr"), pairs,
            tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD), args.cfg["max_new_tokens"],
            args.cfg["beta"], args.baseline)
        posttrain_report.write_report(report, args.out_md, args.out_json)
        run.log_metrics(posttrain_report.flat_metrics(report))


def cmd_prompt_tasks(args) -> None:
    """Prompted training tasks and held-out tasks for the promptability experiment."""
    from lmforge.promptability import make_prompt_tasks

    with _job("prompt_tasks", args.cfg) as run:
        run.log_metrics(make_prompt_tasks(args.mixes, args.out_dir, args.cfg, args.seed,
                                          args.valid_fraction))


def cmd_promptable(args) -> None:
    """Multi-task continued pretraining with a trainable soft prompt (Wu et al. 2022)."""
    from lmforge import promptability
    from lmforge.checkpoint import load_model
    from lmforge.tokenize import PAD, load_tokenizer

    decoder = load_model(args.checkpoint)
    model = promptability.SoftPrompted(decoder, promptability.initial_prompt(
        decoder, args.cfg["prompt_tokens"], args.seed))
    tokenizer = load_tokenizer(args.tokenizer)
    items = promptability.read_items(args.data)
    batches = promptability.mixture_batches(tokenizer, items, tokenizer.token_to_id(PAD),
                                            args.cfg, args.seed, *_rank_and_world())
    _train_job("promptable", model, batches, args, {"from": args.checkpoint},
               {"data.items": len(items)})


def cmd_promptability_report(args) -> None:
    """Zero-shot and few-shot prompt-tuning accuracy on held-out tasks, with and without
    the multi-task continued pretraining."""
    from lmforge import promptability
    from lmforge.checkpoint import load_model, load_prompt
    from lmforge.storage import write_json, write_text
    from lmforge.tokenize import PAD, load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    models = {args.base_name: (load_model(args.base), None),
              args.treated_name: (load_model(args.treated), load_prompt(args.treated))}
    with _job("promptability_report", args.cfg) as run:
        report = promptability.evaluate(models, tokenizer,
                                        promptability.read_items(args.heldout),
                                        tokenizer.token_to_id(PAD), args.cfg, args.seed)
        write_json(args.out_json, report)
        write_text(args.out_md, promptability.markdown(report, args.base_name,
                                                       args.treated_name))
        run.log_metrics({f"{setting}.{task}.{model}": row["accuracy"]
                         for setting, tasks in report.items() for task, rows in tasks.items()
                         for model, row in rows.items()})


def cmd_evaluate(args) -> None:
    """Evaluate one model on one task: metrics and every instance's prediction as JSON."""
    import torch

    from lmforge.evaltasks import TaskSpec
    from lmforge.evaluate import evaluate_pair
    from lmforge.lm import load

    torch.manual_seed(0)
    spec = TaskSpec.from_config(args.task, args.spec)
    with _job(f"evaluate/{args.model_name}/{args.task}", {"task": args.task, **args.spec}) as run:
        model = load(args.model, args.tokenizer, args.model_name, args.batch_size)
        result = evaluate_pair(model, spec, args.out, progress=True)
        metrics = result["metrics"]
        log.info("%s on %s: %s = %s", args.model_name, args.task, result["primary_metric"],
                 metrics[result["primary_metric"]])
        run.log_metrics({f"{args.task}.{k}": v for k, v in metrics.items()
                         if isinstance(v, (int, float))})
        run.log_artifact(args.out)


def cmd_eval_summary(args) -> None:
    """One table of every (model, task) result, with uncertainty and contamination."""
    from lmforge.evaluate import load_results, read_contamination, write_summary

    with _job("eval_summary") as run:
        table = write_summary(load_results(args.inputs), args.out_md, args.out_parquet,
                              args.out_json, read_contamination(args.contamination or []))
        print(table)
        run.log_artifact(args.out_md)


def cmd_evaluate_matrix(args) -> None:
    """Every model on every task of a task file (YAML or JSON: name → spec), then the
    summary: `<out-dir>/<model>/<task>.json`, `<out-dir>/summary.{md,parquet,json}`."""
    import torch
    import yaml

    from lmforge.evaltasks import TaskSpec
    from lmforge.evaluate import evaluate_pair, write_summary
    from lmforge.lm import load

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
    with _job("evaluate_matrix", {"models": list(models), "tasks": list(task_cfg)}) as run:
        for name, path in models.items():
            torch.manual_seed(0)
            model = load(path, args.tokenizer, name, args.batch_size)
            for spec in specs:
                result = evaluate_pair(model, spec, out / name / f"{spec.name}.json", True)
                results.append(result)
                run.log_metrics({f"{name}.{spec.name}.{result['primary_metric']}":
                                 result["metrics"][result["primary_metric"]]})
        print(write_summary(results, out / "summary.md", out / "summary.parquet",
                            out / "summary.json"))
        run.log_artifact(str(out / "summary.md"))


def cmd_heldout_docs(args) -> None:
    """The held-out documents of the tokenizer's split (the ones not trained on), for
    per-domain perplexity."""
    from itertools import islice

    from lmforge.storage import read_jsonl, write_jsonl_gz
    from lmforge.tokenize import is_valid_doc

    heldout = (doc for path in args.docs for doc in read_jsonl(path)
               if is_valid_doc(doc["id"], args.seed, args.valid_fraction))
    log.info("%d held-out documents", write_jsonl_gz(args.out, islice(heldout, args.limit)))


def cmd_plot_loss(args) -> None:
    from lmforge.train import plot_loss

    plot_loss(dict(item.split("=", 1) for item in args.metrics), args.out)


def cmd_growth_report(args) -> None:
    from lmforge.growth_report import write_report

    with _job("growth_report", {}) as run:
        result = write_report(args.small, args.grown, args.baseline, args.out_md, args.out_json,
                              args.out_png)
        run.log_metrics({k: result[k] for k in ("target_loss", "flops_ratio",
                                                "flops_ratio_at_staged_final")
                         if result[k] is not None})


def cmd_effects(args) -> None:
    """Each effect's mean difference across seeded runs of the workflow, with a 95% interval."""
    from lmforge.effects import write_effects

    with _job("effects", {"runs": " ".join(args.runs)}) as run:
        run.log_metrics(write_effects(args.runs, args.out_md, args.out_json))


def cmd_midtrain_report(args) -> None:
    from lmforge.midtrain_report import write_report

    with _job("midtrain_report", {"anneals": args.anneals, "control": args.control}) as run:
        rows = write_report(args.inputs, args.start, args.anneals, args.soup, args.control,
                            args.out_md, args.out_json)
        run.log_metrics({f"{row['task']}.anneal_mean_minus_control":
                         row["anneal_mean_minus_control"] for row in rows})


def cmd_scenes(args) -> None:
    """Generated scenes with PixMo-style captions, points, counts and questions."""
    from lmforge.pixmo import make_scenes

    with _job("scenes", args.cfg) as run:
        run.log_metrics(make_scenes(args.out_dir, args.cfg, args.seed))


def _example_sets(scenes: str, kinds: list[str], tokenizer, text_tokens: int, vision_cfg):
    from lmforge.pixmo import read_records
    from lmforge.tokenize import EOS
    from lmforge.vision import ExampleSet

    crops: dict = {}  # the datasets describe the same images
    sets = [ExampleSet(read_records(Path(scenes) / f"{kind}.train.jsonl.gz", kind), kind,
                       tokenizer, EOS, vision_cfg, text_tokens, crops) for kind in kinds]
    for dataset in sets:
        if dataset.too_long:
            log.warning("%s: %d examples longer than %d text tokens skipped", dataset.kind,
                        dataset.too_long, text_tokens)
    return sets


def cmd_vlm(args) -> None:
    """Train the vision-language model: caption pretraining from a language model, fine-tuning
    on the √size mixture, or the text-only baseline (the mixture without images)."""
    from lmforge import vision
    from lmforge.checkpoint import load_model
    from lmforge.tokenize import PAD, load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    if args.stage == "caption":
        model = vision.build_vlm(args.vision, load_model(args.checkpoint),
                                 args.max_seq_len, args.seed)
    elif args.stage == "finetune":
        model = vision.load_vlm(args.checkpoint)
    else:
        model = vision.with_context(load_model(args.checkpoint), args.max_seq_len)
    vision_cfg = vision.VisionConfig(**args.vision)
    if isinstance(model, vision.Molmo) and model.vision_cfg != vision_cfg:
        raise InputError(f"{args.checkpoint}: its vision config differs from vision.encoder")
    text_tokens = args.max_seq_len - vision_cfg.n_image_tokens
    sets = _example_sets(args.scenes, args.datasets, tokenizer, text_tokens, vision_cfg)
    rank, world_size = _rank_and_world()
    batches = vision.mixture_batches(sets, args.cfg, args.seed, tokenizer.token_to_id(PAD),
                                     args.stage != "text_only", rank, world_size)
    mixture = vision.sqrt_mixture({s.kind: len(s) for s in sets})
    # The LM's rate (lm_lr_scale × lr) applies to the text-only baseline's every weight too.
    lm_scale = args.cfg.get("lm_lr_scale", 1.0)
    train_args = {"lr_scale": {name: lm_scale for name, _ in model.named_parameters()
                               if args.stage == "text_only" or name.startswith("decoder.")}}
    if args.stage != "text_only":
        train_args["objective"] = vision.objective
    _train_job(f"vlm_{args.stage}", model, batches, args, {"from": args.checkpoint},
               {**{f"data.{s.kind}": len(s) for s in sets},
                **{f"data.{s.kind}.skipped_too_long": s.too_long for s in sets},
                **{f"mixture.{k}": v for k, v in mixture.items()}}, **train_args)


def cmd_vlm_report(args) -> None:
    """Captions, VQA, pointing and counting on held-out scenes: VLM vs text-only vs random."""
    from lmforge import vlm_eval
    from lmforge.checkpoint import load_model
    from lmforge.pixmo import KINDS, read_records
    from lmforge.tokenize import EOS, load_tokenizer
    from lmforge.vision import load_vlm, with_context

    vlm = load_vlm(args.vlm)
    text_only = with_context(load_model(args.text_only), vlm.cfg.max_seq_len)
    eval_sets = {kind: read_records(Path(args.scenes) / f"{kind}.eval.jsonl.gz", kind)
                 for kind in KINDS}
    with _job("vlm_report", args.cfg) as run:
        report = vlm_eval.evaluate(vlm, text_only, load_tokenizer(args.tokenizer), eval_sets,
                                   EOS, args.cfg["max_objects"])
        write_json(args.out_json, report)
        write_text(args.out_md, vlm_eval.markdown(report))
        vlm_eval.plot_points(eval_sets["pixmo_points"], report["answers"]["pixmo_points"],
                             args.out_png)
        run.log_metrics(vlm_eval.flat_metrics(report))
        for path in (args.out_md, args.out_png):
            run.log_artifact(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, *arguments):
        p = sub.add_parser(name, help=func.__doc__)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)

    req = {"required": True}
    cfg = (["--cfg"], {"type": _json, **req})
    seed = (["--seed"], {"type": int, **req})
    out = (["--out"], {**req})
    out_dir = (["--out-dir"], {**req})
    docs = (["--docs"], {"nargs": "+", **req})
    metrics = (["--metrics"], {**req})
    tokens_dir = (["--tokens-dir"], {**req})
    add("warmup", cmd_warmup)
    add("launch", cmd_launch, (["--processes"], {"type": int, "default": 1}),
        (["--nodes"], {"type": int, "default": 1}),
        (["command_line"], {"nargs": argparse.REMAINDER}))
    add("make-tasks", cmd_make_tasks, cfg, out_dir)
    add("crawl-demo", cmd_crawl_demo, cfg, seed, out_dir, (["--tasks-dir"], req))
    add("extract", cmd_extract, (["--warc"], req), out, (["--report"], req), (["--source"], req))
    add("tag", cmd_tag, (["--tagger"], req), (["--docs"], req), out, cfg)
    add("dedup", cmd_dedup, (["--method"], {"choices": ["dedup_exact", "dedup_url"], **req}), docs,
        (["--out"], {"nargs": "+", **req}))
    add("dedup-paragraphs", cmd_dedup_paragraphs, docs, (["--out"], {"nargs": "+", **req}), cfg)
    add("minhash", cmd_minhash, (["--docs"], req), out, cfg)
    add("dedup-minhash", cmd_dedup_minhash, (["--signatures"], {"nargs": "+", **req}), docs,
        (["--out"], {"nargs": "+", **req}), cfg)
    add("decontam", cmd_decontam, (["--docs"], req), (["--tasks-dir"], req), out, cfg)
    add("train-quality", cmd_train_quality, docs, out, (["--metrics"], req), cfg, seed)
    add("tag-quality", cmd_tag_quality, (["--docs"], req), (["--model"], req), out)
    add("label-eval", cmd_label_eval, (["--labels"], req), docs,
        (["--attributes"], {"nargs": "+", **req}), (["--out-json"], req), (["--out-md"], req))
    add("mix", cmd_mix, (["--docs"], req), (["--attributes"], {"nargs": "+", **req}), out,
        (["--funnel"], req), cfg)
    add("funnel", cmd_funnel, (["--inputs"], {"nargs": "+", **req}), cfg, (["--out-json"], req),
        (["--out-md"], req))
    add("stats", cmd_stats, docs, out_dir, cfg, (["--tokenizer"], {}), (["--tasks-dir"], {}),
        (["--lang-attributes"], {"nargs": "*", "default": []}))
    add("export-hf", cmd_export_hf, (["--checkpoint"], req), out, (["--tokenizer"], {}))
    add("plan", cmd_plan, (["--preset"], {}), (["--checkpoint"], {}),
        (["--cfg"], {"type": _json}), (["--configfile"], {"nargs": "+"}),
        (["--mfu"], {"type": float, "default": 0.4}),
        (["--target-loss"], {"type": float}),
        (["--world-size"], {"type": int, "default": 1}),
        (["--device-memory-gib"], {"type": float}))
    add("overlap", cmd_overlap, docs, (["--b"], {"nargs": "+", **req}), out_dir, cfg)
    search_cfg = (["--cfg"], {"type": _json, "default": {
        "duckdb": {"memory_limit": "2GB", "threads": 2, "temp_directory": tempfile.gettempdir()}}})
    add("search", cmd_search, docs, search_cfg, (["--phrase"], {}), (["--regex"], {}),
        (["--limit"], {"type": int, "default": 100}))
    add("train-tokenizer", cmd_train_tokenizer, docs, out, seed,
        (["--vocab-size"], {"type": int, **req}), (["--valid-fraction"], {"type": float, **req}))
    add("tokenize", cmd_tokenize, docs, (["--tokenizer"], req), out_dir, seed,
        (["--valid-fraction"], {"type": float, **req}))
    add("init-model", cmd_init_model, cfg, seed, out, (["--tokens-meta"], req),
        (["--layers-factor"], {"type": int, "default": 1}),
        (["--width-factor"], {"type": int, "default": 1}))
    add("pretrain", cmd_pretrain, (["--init"], req), tokens_dir, cfg, seed, out, metrics,
        (["--job-name"], {"default": "pretrain"}))
    add("grow", cmd_grow, (["--checkpoint"], req), tokens_dir, cfg, seed, out, metrics,
        (["--operator"], {"choices": ["depth", "width"], **req}),
        (["--factor"], {"type": int, **req}), (["--width-noise"], {"type": float, **req}))
    add("soup", cmd_soup, (["--checkpoints"], {"nargs": "+", **req}), out)
    add("sft-data", cmd_sft_data, (["--mixes"], {"nargs": "+", **req}), out, cfg,
        (["--tasks-cfg"], {"type": _json, **req}), seed,
        (["--valid-fraction"], {"type": float, **req}))
    add("sft", cmd_sft, (["--checkpoint"], req), (["--data"], req), (["--tokenizer"], req), cfg,
        seed, out, metrics)
    add("instruct-data", cmd_instruct_data, (["--mixes"], {"nargs": "+", **req}), out_dir, cfg,
        (["--tasks-cfg"], {"type": _json, **req}), seed,
        (["--valid-fraction"], {"type": float, **req}))
    for name, func in (("dpo", cmd_dpo), ("rlvr", cmd_rlvr)):
        add(name, func, (["--checkpoint"], req), (["--train"], req), (["--valid"], req),
            (["--tokenizer"], req), cfg, seed, out, metrics)
    add("prompt-tasks", cmd_prompt_tasks, (["--mixes"], {"nargs": "+", **req}), out_dir, cfg,
        seed, (["--valid-fraction"], {"type": float, **req}))
    add("promptable", cmd_promptable, (["--checkpoint"], req), (["--data"], req),
        (["--tokenizer"], req), cfg, seed, out, metrics)
    add("promptability-report", cmd_promptability_report, (["--base"], req),
        (["--base-name"], req), (["--treated"], req), (["--treated-name"], req),
        (["--tokenizer"], req), (["--heldout"], req), cfg, seed, (["--out-md"], req),
        (["--out-json"], req))
    add("posttrain-report", cmd_posttrain_report, (["--models"], {"nargs": "+", **req}),
        (["--baseline"], req), (["--tokenizer"], req), (["--rlvr-valid"], req),
        (["--preference-valid"], req), cfg, (["--out-md"], req), (["--out-json"], req))
    add("scenes", cmd_scenes, cfg, seed, out_dir)
    add("vlm", cmd_vlm, (["--stage"], {"choices": ["caption", "finetune", "text_only"], **req}),
        (["--checkpoint"], req), (["--scenes"], req), (["--datasets"], {"nargs": "+", **req}),
        (["--vision"], {"type": _json, **req}), (["--max-seq-len"], {"type": int, **req}),
        (["--tokenizer"], req), cfg, seed, out, metrics)
    add("vlm-report", cmd_vlm_report, (["--vlm"], req), (["--text-only"], req),
        (["--scenes"], req), (["--tokenizer"], req), cfg, (["--out-md"], req),
        (["--out-json"], req), (["--out-png"], req))
    batch_size = (["--batch-size"], {"type": int, "default": 16})
    add("evaluate", cmd_evaluate, (["--model"], req), (["--model-name"], req),
        (["--tokenizer"], {}), (["--task"], req), (["--spec"], {"type": _json, **req}),
        batch_size, out)
    add("eval-summary", cmd_eval_summary, (["--inputs"], {"nargs": "+", **req}),
        (["--contamination"], {"nargs": "*"}), (["--out-md"], req), (["--out-parquet"], req),
        (["--out-json"], req))
    add("evaluate-matrix", cmd_evaluate_matrix, (["--models"], {"nargs": "+", **req}),
        (["--tokenizer"], {}), (["--tasks"], req), batch_size, out_dir)
    add("heldout-docs", cmd_heldout_docs, docs, seed,
        (["--valid-fraction"], {"type": float, **req}), (["--limit"], {"type": int, **req}), out)
    add("plot-loss", cmd_plot_loss, (["--metrics"], {"nargs": "+", **req}), out)
    add("midtrain-report", cmd_midtrain_report, (["--inputs"], {"nargs": "+", **req}),
        (["--start"], req), (["--anneals"], {"nargs": "+", **req}), (["--soup"], req),
        (["--control"], req), (["--out-md"], req), (["--out-json"], req))
    add("effects", cmd_effects, (["--runs"], {"nargs": "+", **req}), (["--out-md"], req),
        (["--out-json"], req))
    add("growth-report", cmd_growth_report, (["--small"], req), (["--grown"], req),
        (["--baseline"], req), (["--out-md"], req), (["--out-json"], req), (["--out-png"], req))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command in TRAINING_COMMANDS:
            from lmforge.train import resolve_batch

            args.cfg = resolve_batch(args.cfg, _rank_and_world()[1])
        for name in ("docs", "mixes"):  # a mix is a directory of parts per input shard
            if isinstance(getattr(args, name, None), list):
                setattr(args, name, document_files(getattr(args, name)))
        status = args.func(args)
    except (InputError, ValueError, KeyError, FileNotFoundError, LaunchError) as err:
        if os.environ.get("LMFORGE_DEBUG"):
            raise
        print(f"lmforge {args.command}: error: {err}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())

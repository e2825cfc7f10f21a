"""What every training command shares: its resolved `--cfg`, its token batches and held-out
loss, and the call into the training loop that logs to the job's MLflow run."""

from __future__ import annotations

import argparse

from lmforge.data.tokenize import open_tokens
from lmforge.io.storage import InputError
from lmforge.runner import (
    CHECKPOINT,
    METRICS,
    OUT,
    SEED,
    TOKENIZER,
    arg,
    command,
    json_object,
    rank_and_world,
)
from lmforge.train.config import TrainConfig, resolve_batch
from lmforge.train.data import heldout_loss_fn, instance_batches
from lmforge.train.loop import train


def training_cfg(text: str) -> TrainConfig:
    """`--cfg` of a training command: micro-batches and accumulation resolved for this world."""
    try:
        return resolve_batch(json_object(text), rank_and_world()[1])
    except (ValueError, InputError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


TRAIN_CFG = arg("--cfg", type=training_cfg)


def token_batches(tokens_dir: str, model, cfg: TrainConfig, seed: int, first_instance: int = 0):
    tokens = open_tokens(tokens_dir, "train")
    return instance_batches(tokens, model.cfg.max_seq_len, cfg, seed, *rank_and_world(),
                            first_instance=first_instance)


def heldout(tokens_dir: str, model, cfg: TrainConfig):
    """The in-loop held-out loss over the mix's valid split, when `eval_every` asks for it."""
    if not cfg.eval_every:
        return None
    tokens = open_tokens(tokens_dir, "valid")
    return heldout_loss_fn(tokens, model.cfg.max_seq_len, cfg.eval_instances,
                           cfg.micro_batch_size)


def train_job(job, model, batches, args, extra_metrics: dict, **train_args) -> dict:
    """Train `model` as `args` say (--cfg, --seed, --out, --metrics); the job's run gets the
    model's size, `extra_metrics`, the loss curve and the summary it returns."""
    job.log_metrics({"params": model.num_params(non_embedding=False), **extra_metrics})
    summary = train(model, batches, args.cfg, args.seed, args.out, args.metrics, tracker=job,
                    **train_args)
    job.log_artifact(args.metrics)
    return {f"summary.{k}": v for k, v in summary.items()}


def post_training_command(name: str):
    """Declare `lmforge <name>`: train from --checkpoint on --train, with --valid held out."""
    return command(name, CHECKPOINT, arg("--train"), arg("--valid"), TOKENIZER, TRAIN_CFG, SEED,
                   OUT, METRICS,
                   params=lambda args: {**args.cfg.to_dict(), "from": args.checkpoint,
                                        "seed": args.seed},
                   inputs=("checkpoint", "train", "valid", "tokenizer"),
                   outputs=("out", "metrics"))

"""The pretraining commands: a fresh model, its training on the mix's tokens, and the loss
curves of every training run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lmforge.data.tokenize import token_files
from lmforge.io.storage import InputError, atomic_dir
from lmforge.model.checkpoint import init_model, load_model, read_architecture, save_model
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.runner import METRICS, OUT, SEED, TOKENS_DIR, arg, command, json_object
from lmforge.train.job import TRAIN_CFG, heldout, token_batches, train_job
from lmforge.train.loop import train
from lmforge.train.metrics import plot_loss


@command("warmup", tracked=False)
def warmup_command(args, job) -> None:
    """Build DeepSpeed's CPU ops once (about a minute), so jobs and tests don't pay it."""
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


def _init_params(args) -> dict:
    params = {"cfg": args.cfg, "like": args.like, "layers_factor": args.layers_factor,
              "width_factor": args.width_factor, "seed": args.seed}
    return {key: value for key, value in params.items() if value is not None}


@command("init-model", arg("--cfg", type=json_object, default=None), SEED, OUT,
         arg("--tokenizer", default=None),
         arg("--like", default=None, help="a checkpoint whose architecture to take instead of "
                                          "--cfg and --tokenizer (a model started from the Hub)"),
         arg("--layers-factor", type=int, default=1), arg("--width-factor", type=int, default=1),
         job=lambda args: f"init/{Path(args.out).name}", params=_init_params,
         inputs=("tokenizer", "like"), outputs=("out",))
def init_model_command(args, job) -> dict:
    """A randomly initialised model: `--cfg` for the tokenizer's vocabulary, or the
    architecture of `--like`; the factors size it as a grown model."""
    from lmforge.data.tokenize import load_tokenizer

    if args.like:
        architecture, cfg = read_architecture(args.like)
    elif args.cfg is not None and args.tokenizer:
        architecture = "olmo2"
        cfg = {**args.cfg, "vocab_size": load_tokenizer(args.tokenizer).get_vocab_size()}
    else:
        raise InputError("init-model needs --cfg and --tokenizer, or --like")
    model = init_model(cfg, args.seed, args.layers_factor, args.width_factor, architecture)
    with atomic_dir(args.out) as tmp:
        save_model(model, tmp)
    return {"params": model.num_params(non_embedding=False),
            "non_embedding_params": model.num_params()}


@command("pretrain", arg("--init"), TOKENS_DIR, TRAIN_CFG, SEED, OUT, METRICS,
         arg("--job-name", default="pretrain"), job=lambda args: args.job_name,
         params=lambda args: {**args.cfg.to_dict(), "init": args.init, "seed": args.seed},
         inputs=("init", "token_files"), outputs=("out", "metrics"))
def pretrain_command(args, job) -> dict:
    """Train a model on the mix's tokens from its initial checkpoint."""
    model = load_model(args.init)
    args.token_files = token_files(args.tokens_dir)
    batches = token_batches(args.tokens_dir, model, args.cfg, args.seed)
    return train_job(job, model, batches, args, {},
                     heldout=heldout(args.tokens_dir, model, args.cfg))


@command("plot-loss", arg("--metrics", nargs="+"), OUT, tracked=False)
def plot_loss_command(args, job) -> None:
    """Loss curves of training runs (NAME=metrics.csv) in one figure."""
    plot_loss(dict(item.split("=", 1) for item in args.metrics), args.out)

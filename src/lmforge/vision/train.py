"""The vision-language training command: caption pretraining from a language model,
fine-tuning on the √size mixture, or the text-only baseline (the mixture without images)."""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.io.storage import InputError
from lmforge.model.checkpoint import load_model
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
from lmforge.train.job import TRAIN_CFG, train_job
from lmforge.vision import molmo, pixmo

log = logging.getLogger(__name__)


def example_sets(scenes: str, kinds: list[str], tokenizer, text_tokens: int,
                 vision_cfg: molmo.VisionConfig) -> list[molmo.ExampleSet]:
    crops: dict = {}  # the datasets describe the same images
    sets = [molmo.ExampleSet(pixmo.read_records(Path(scenes) / f"{kind}.train.jsonl.gz", kind),
                             kind, tokenizer, EOS, vision_cfg, text_tokens, crops)
            for kind in kinds]
    for dataset in sets:
        if dataset.too_long:
            log.warning("%s: %d examples longer than %d text tokens skipped", dataset.kind,
                        dataset.too_long, text_tokens)
    return sets


@command("vlm", arg("--stage", choices=["caption", "finetune", "text_only"]), CHECKPOINT,
         arg("--scenes"), arg("--datasets", nargs="+"), arg("--vision", type=json_object),
         arg("--max-seq-len", type=int), TOKENIZER, TRAIN_CFG, SEED, OUT, METRICS,
         job=lambda args: f"vlm_{args.stage}",
         params=lambda args: {**args.cfg.to_dict(), "from": args.checkpoint, "seed": args.seed},
         inputs=("checkpoint", "scenes", "tokenizer"), outputs=("out", "metrics"))
def vlm_command(args, job) -> dict:
    """Train the vision-language model (caption, finetune) or its text-only baseline."""
    tokenizer = load_tokenizer(args.tokenizer)
    if args.stage == "caption":
        model = molmo.build_vlm(args.vision, load_model(args.checkpoint), args.max_seq_len,
                                args.seed)
    elif args.stage == "finetune":
        model = molmo.load_vlm(args.checkpoint)
    else:
        model = molmo.with_context(load_model(args.checkpoint), args.max_seq_len)
    vision_cfg = molmo.VisionConfig(**args.vision)
    if isinstance(model, molmo.Molmo) and model.vision_cfg != vision_cfg:
        raise InputError(f"{args.checkpoint}: its vision config differs from vision.encoder")
    text_tokens = args.max_seq_len - vision_cfg.n_image_tokens
    sets = example_sets(args.scenes, args.datasets, tokenizer, text_tokens, vision_cfg)
    batches = molmo.mixture_batches(sets, args.cfg, args.seed, tokenizer.token_to_id(PAD),
                                    args.stage != "text_only", *rank_and_world())
    mixture = molmo.sqrt_mixture({s.kind: len(s) for s in sets})
    # The LM's rate (lm_lr_scale × lr) applies to the text-only baseline's every weight too.
    lm_scale = args.cfg.lm_lr_scale
    train_args = {"lr_scale": {name: lm_scale for name, _ in model.named_parameters()
                               if args.stage == "text_only" or name.startswith("decoder.")}}
    if args.stage != "text_only":
        train_args["objective"] = molmo.objective
    return train_job(job, model, batches, args,
                     {**{f"data.{s.kind}": len(s) for s in sets},
                      **{f"data.{s.kind}.skipped_too_long": s.too_long for s in sets},
                      **{f"mixture.{k}": v for k, v in mixture.items()}}, **train_args)

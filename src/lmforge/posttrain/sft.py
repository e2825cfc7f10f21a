"""Instruction data made by the workflow, and supervised fine-tuning batches.

Skills (lmforge.posttrain.instruct): two-number addition (operand pairs held out for evaluation are
excluded), sentence completion from the training mix, and completion under a checkable
constraint. Examples use the Tulu chat format (lmforge.posttrain.chat);
the loss is on the assistant's tokens (and the closing EOS) only, as in Tulu / open-instruct,
and examples are packed into full rows without attending across each other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.io.storage import InputError, read_jsonl, write_jsonl_gz
from lmforge.posttrain import chat, instruct
from lmforge.runner import (
    CFG,
    CHECKPOINT,
    METRICS,
    OUT,
    SEED,
    TOKENIZER,
    VALID_FRACTION,
    arg,
    command,
    json_object,
    rank_and_world,
)
from lmforge.settings import Section
from lmforge.train.config import TrainConfig
from lmforge.train.job import TRAIN_CFG, train_job


@dataclass(frozen=True)
class SftDataConfig(Section):
    SECTION = "sft"

    arithmetic_examples: int
    completion_examples: int
    constraint_examples: int

log = logging.getLogger(__name__)


def make_sft_data(mix_paths: list[str], out_path: str | Path, cfg: SftDataConfig | Mapping,
                  tasks_cfg: Mapping,
                  seed: int, valid_fraction: float) -> dict:
    """Conversations in open-instruct's `messages` format: sums (bare and as word problems),
    sentence completions, and completions under a checkable constraint
    (lmforge.posttrain.instruct)."""
    cfg = SftDataConfig.of(cfg)
    rng = random.Random(seed)
    pairs, _ = instruct.training_pairs(tasks_cfg)
    sentences, _ = instruct.corpus_sentences(mix_paths, seed, valid_fraction)
    if not sentences:
        raise InputError("the mix has no sentences of 8-24 words for completion examples")

    def example(user: str, answer: str, skill: str) -> dict:
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": answer}], "skill": skill}

    examples = [example(instruct.arithmetic_question(a, b, rng), str(a + b), "arithmetic")
                for a, b in instruct.draw(pairs, cfg.arithmetic_examples, rng)]
    examples += [example(*instruct.completion_prompt(words), "completion")
                 for words in instruct.draw(sentences, cfg.completion_examples, rng)]
    for words in instruct.draw(sentences, cfg.constraint_examples, rng):
        name = rng.choice(sorted(instruct.CONSTRAINT_TEMPLATES))
        prompt, _, answer = instruct.constrained_example(words, name)
        examples.append(example(prompt, answer, "constraint"))
    rng.shuffle(examples)
    write_jsonl_gz(out_path, examples)
    return {"examples": len(examples), "arithmetic": cfg.arithmetic_examples,
            "completion": cfg.completion_examples, "constraint": cfg.constraint_examples}


def encode_example(tokenizer, example: dict, max_len: int) -> tuple[list[int], list[bool]] | None:
    """Token ids of the conversation in the chat format and, per token, whether it is trained
    on (assistant turns and their end-of-text only); None if it does not fit."""
    try:
        ids, trained = chat.encode(tokenizer, example.get("messages"), EOS)
    except InputError as err:
        raise InputError(f"SFT example {example.get('id', '')!r}: {err}") from None
    return (ids, trained) if len(ids) <= max_len else None


def pack(examples: list[tuple[list[int], list[bool]]], max_len: int, pad: int
         ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Examples packed in order into rows of `max_len` tokens (a row closes when the next
    example does not fit), as (inputs, labels, doc_ids) of max_len − 1 positions. doc_ids
    keep attention and positions within each example (padding is its own document, -1);
    a label is kept where the next token is trained on and in the same example."""
    rows, current, length = [], [], 0
    for example in examples:
        if current and length + len(example[0]) > max_len:
            rows.append(current)
            current, length = [], 0
        current.append(example)
        length += len(example[0])
    if current:
        rows.append(current)
    out = []
    for row in rows:
        ids = torch.full((max_len,), pad, dtype=torch.long)
        trained = torch.zeros(max_len, dtype=torch.bool)
        docs = torch.full((max_len,), -1, dtype=torch.long)
        cursor = 0
        for number, (example_ids, example_trained) in enumerate(row):
            end = cursor + len(example_ids)
            ids[cursor:end] = torch.tensor(example_ids)
            trained[cursor:end] = torch.tensor(example_trained)
            docs[cursor:end] = number
            cursor = end
        same_doc = (docs[1:] == docs[:-1]) & (docs[1:] >= 0)
        labels = torch.where(trained[1:] & same_doc, ids[1:], -100)
        out.append((ids[:-1], labels, docs[:-1]))
    return out


def answer_rows(pairs: list[tuple[list[int], list[int]]], pad: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of context + answer rows, right-padded to the longest, the labels
    on the answer's tokens only (RLVR's responses, prompted tasks' answers)."""
    length = max(len(c) + len(a) for c, a in pairs)
    ids = torch.full((len(pairs), length), pad, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    for row, (context, answer) in enumerate(pairs):
        ids[row, :len(context) + len(answer)] = torch.tensor(context + answer)
        labels[row, len(context):len(context) + len(answer)] = torch.tensor(answer)
    return ids[:, :-1], labels[:, 1:]


def sft_batches(tokenizer, data_path: str | Path, max_len: int, cfg: TrainConfig | Mapping,
                seed: int, rank: int = 0, world_size: int = 1
                ) -> tuple[Callable[[int, int], tuple], dict]:
    """Micro-batches of packed rows (inputs, labels, doc_ids): each epoch shuffles the examples
    with the seed and packs them; each step's global batch is split across ranks as in
    pretraining. Without `packing` every example is a row of its own."""
    cfg = TrainConfig.of(cfg)
    pad = tokenizer.token_to_id(PAD)
    encoded, too_long = [], 0
    for example in read_jsonl(data_path):
        item = encode_example(tokenizer, example, max_len)
        if item is None:
            too_long += 1
        else:
            encoded.append(item)
    if not encoded:
        raise ValueError(f"{data_path}: no SFT example fits in {max_len} tokens")
    if too_long:
        log.warning("%s: %d examples longer than %d tokens skipped", data_path, too_long, max_len)
    micro = cfg.micro_batch_size
    epochs: list[list] = []

    def rows_of(epoch: int) -> list:
        while len(epochs) <= epoch:
            order = np.random.default_rng([seed, len(epochs)]).permutation(len(encoded))
            shuffled = [encoded[int(i)] for i in order]
            epochs.append(pack(shuffled, max_len, pad) if cfg.packing
                          else [pack([e], max_len, pad)[0] for e in shuffled])
        return epochs[epoch]

    def row(index: int):
        epoch = 0
        while index >= len(rows_of(epoch)):
            index -= len(rows_of(epoch))
            epoch += 1
        return rows_of(epoch)[index]

    def batch(step: int, micro_step: int):
        start = cfg.micro_batch_start(step, micro_step, rank, world_size)
        return tuple(torch.stack(parts) for parts in zip(*(row(start + i) for i in range(micro))))

    rows = len(rows_of(0))
    return batch, {"examples": len(encoded), "skipped_too_long": too_long, "rows_per_epoch": rows,
                   "examples_per_row": len(encoded) / rows}


@command("sft-data", arg("--mixes", nargs="+"), OUT, CFG, arg("--tasks-cfg", type=json_object),
         SEED, VALID_FRACTION, job="sft_data", inputs=("mixes",), outputs=("out",))
def sft_data_command(args, job) -> dict:
    """The SFT conversations, in open-instruct's `messages` format."""
    return make_sft_data(args.mixes, args.out, args.cfg, args.tasks_cfg, args.seed,
                         args.valid_fraction)


@command("sft", CHECKPOINT, arg("--data"), TOKENIZER, TRAIN_CFG, SEED, OUT, METRICS,
         params=lambda args: {**args.cfg.to_dict(), "from": args.checkpoint, "seed": args.seed},
         inputs=("checkpoint", "data", "tokenizer"), outputs=("out", "metrics"))
def sft_command(args, job) -> dict:
    """Supervised fine-tuning on the assistant turns of the conversations."""
    from lmforge.model.checkpoint import load_model

    model = load_model(args.checkpoint)
    batches, info = sft_batches(load_tokenizer(args.tokenizer), args.data, model.cfg.max_seq_len,
                                args.cfg, args.seed, *rank_and_world())
    log.info("sft data: %s", info)
    return train_job(job, model, batches, args, {f"data.{k}": v for k, v in info.items()})

"""Instruction data made by the workflow, and supervised fine-tuning batches.

Two skills: two-number addition (operand pairs held out for evaluation are excluded) and
sentence completion from the training mix. Examples use a chat template with role tokens; the
loss is on the assistant's tokens (and the closing EOS) only, as in Tulu / open-instruct.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lmforge import sources, tasks
from lmforge.storage import read_jsonl, write_jsonl_gz
from lmforge.tokenize import ASSISTANT, EOS, PAD, USER, is_valid_doc


def prompt_text(user: str) -> str:
    return f"{USER}\n{user}\n{ASSISTANT}\n"


def make_sft_data(mix_paths: list[str], out_path: str | Path, cfg: dict, tasks_cfg: dict,
                  seed: int, valid_fraction: float) -> dict:
    rng = random.Random(seed)
    arith = tasks_cfg["arith_gen"]
    held = set(tasks.eval_arith_pairs(arith["items"], arith["max_operand"], tasks_cfg["seed"]))
    pairs = [(a, b) for a in range(arith["max_operand"] + 1)
             for b in range(arith["max_operand"] + 1) if (a, b) not in held]
    examples = []
    for _ in range(cfg["arithmetic_examples"]):
        a, b = rng.choice(pairs)
        examples.append({"messages": [{"role": "user", "content": tasks.arith_question(a, b)},
                                      {"role": "assistant", "content": str(a + b)}],
                         "skill": "arithmetic"})
    completions = []
    for path in mix_paths:
        for doc in read_jsonl(path):
            if is_valid_doc(doc["id"], seed, valid_fraction):
                continue  # held-out documents stay unseen
            for para in doc["text"].split("\n"):
                for sent in sources.sentences(para):
                    words = sent.split()
                    if 8 <= len(words) <= 24:
                        completions.append(words)
    rng.shuffle(completions)
    for words in completions[: cfg["cloze_examples"]]:
        half = len(words) // 2
        examples.append({"messages": [
            {"role": "user", "content": "Complete the sentence: " + " ".join(words[:half])},
            {"role": "assistant", "content": " ".join(words[half:])}], "skill": "completion"})
    rng.shuffle(examples)
    write_jsonl_gz(out_path, examples)
    return {"examples": len(examples), "arithmetic": cfg["arithmetic_examples"],
            "completion": min(cfg["cloze_examples"], len(completions))}


def encode_example(tokenizer, example: dict, max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels (-100 outside assistant turns); None if it does not fit."""
    ids: list[int] = []
    labels: list[int] = []
    for message in example["messages"]:
        if message["role"] == "user":
            part = tokenizer.encode(prompt_text(message["content"]), add_special_tokens=False).ids
            ids += part
            labels += [-100] * len(part)
        elif message["role"] == "assistant":
            part = tokenizer.encode(message["content"], add_special_tokens=False).ids
            part += [tokenizer.token_to_id(EOS)]
            ids += part
            labels += part
        else:
            raise ValueError(f"unknown role {message['role']!r}")
    # Shifted pairs: input ids[:-1] predicts labels[1:].
    if len(ids) > max_len:
        return None
    return ids, labels


def sft_batches(tokenizer, data_path: str | Path, max_len: int, cfg: dict, seed: int,
                rank: int = 0, world_size: int = 1
                ) -> tuple[Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], dict]:
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
    micro = cfg["micro_batch_size"]
    orders: dict[int, np.ndarray] = {}

    def order(epoch: int) -> np.ndarray:
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(len(encoded))
        return orders[epoch]

    def batch(step: int, micro_step: int):
        # Each step's global batch is split across ranks as in pretraining.
        start = (step * cfg["grad_accum"] * world_size + micro_step * world_size + rank) * micro
        inputs = torch.full((micro, max_len - 1), pad, dtype=torch.long)
        labels = torch.full((micro, max_len - 1), -100, dtype=torch.long)
        for row in range(micro):
            epoch, offset = divmod(start + row, len(encoded))
            ids, labs = encoded[int(order(epoch)[offset])]
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            labels[row, : len(labs) - 1] = torch.tensor(labs[1:])
        return inputs, labels

    return batch, {"examples": len(encoded), "skipped_too_long": too_long}

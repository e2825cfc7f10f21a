"""Evaluation: held-out perplexity, multiple choice by log-likelihood, generation by exact match.

Multiple choice follows OLMES' "rc" formulation: each choice is scored as a continuation of
the context, reported as accuracy on the summed log-likelihood and per character.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge import tasks
from lmforge.model import Olmo2
from lmforge.sft import prompt_text
from lmforge.storage import read_json
from lmforge.tokenize import EOS


@torch.no_grad()
def heldout_perplexity(model: Olmo2, tokens: np.ndarray, max_tokens: int) -> dict:
    """Mean next-token loss over non-overlapping windows of the held-out token file."""
    seq = model.cfg.max_seq_len
    tokens = np.asarray(tokens[: max_tokens + 1], dtype=np.int64)
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, seq):
        window = torch.from_numpy(tokens[start : start + seq + 1])
        if len(window) < 2:
            break
        logits = model(window[:-1].unsqueeze(0))
        loss = F.cross_entropy(logits[0].float(), window[1:], reduction="sum")
        total += loss.item()
        count += len(window) - 1
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": count}


@torch.no_grad()
def continuation_logprob(model: Olmo2, context: list[int], continuation: list[int]) -> float:
    ids = (context + continuation)[-(model.cfg.max_seq_len + 1) :]
    n_cont = len(continuation)
    inputs = torch.tensor(ids[:-1]).unsqueeze(0)
    logprobs = F.log_softmax(model(inputs)[0].float(), dim=-1)
    targets = torch.tensor(ids[1:])
    picked = logprobs[torch.arange(len(targets)), targets]
    return picked[-n_cont:].sum().item()


def multiple_choice(model: Olmo2, tokenizer, items: list[dict]) -> dict:
    correct = correct_per_char = 0
    for item in items:
        context = tokenizer.encode(item["context"], add_special_tokens=False).ids
        scores = []
        for choice in item["choices"]:
            cont = tokenizer.encode(" " + choice, add_special_tokens=False).ids
            scores.append(continuation_logprob(model, context, cont))
        per_char = [s / len(" " + c) for s, c in zip(scores, item["choices"])]
        correct += int(np.argmax(scores)) == item["gold"]
        correct_per_char += int(np.argmax(per_char)) == item["gold"]
    n = len(items)
    return {"acc": correct / n, "acc_per_char": correct_per_char / n,
            "chance": float(np.mean([1 / len(i["choices"]) for i in items])), "items": n}


@torch.no_grad()
def greedy_generate(model: Olmo2, prompt_ids: list[int], max_new_tokens: int, stop_ids: set[int]
                    ) -> list[int]:
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        window = torch.tensor(ids[-model.cfg.max_seq_len :]).unsqueeze(0)
        next_id = int(model(window)[0, -1].argmax())
        if next_id in stop_ids:
            break
        ids.append(next_id)
        out.append(next_id)
    return out


def generation_exact_match(model: Olmo2, tokenizer, items: list[dict], max_new_tokens: int
                           ) -> dict:
    stop = {tokenizer.token_to_id(EOS)}
    hits, examples = 0, []
    for item in items:
        prompt = tokenizer.encode(prompt_text(item["question"]), add_special_tokens=False).ids
        answer = tokenizer.decode(greedy_generate(model, prompt, max_new_tokens, stop))
        answer = answer.strip().split("\n")[0].strip()
        hits += answer == item["answer"]
        if len(examples) < 5:
            examples.append({"question": item["question"], "gold": item["answer"],
                             "generated": answer})
    return {"exact_match": hits / len(items), "items": len(items), "examples": examples}


def evaluate(model: Olmo2, tokenizer, task: str, task_dir: str | Path, tokens_dir: str | Path,
             cfg: dict) -> dict:
    model.eval()
    if task == "heldout_ppl":
        meta = read_json(Path(tokens_dir) / "meta.json")
        valid = np.memmap(Path(tokens_dir) / "valid.npy", dtype=np.dtype(meta["dtype"]), mode="r")
        return heldout_perplexity(model, valid, cfg["max_ppl_tokens"])
    items = tasks.load_task(Path(task_dir) / f"{task}.jsonl.gz")
    if task == "cloze_mc":
        return multiple_choice(model, tokenizer, items)
    if task == "arith_gen":
        return generation_exact_match(model, tokenizer, items, cfg["max_new_tokens"])
    raise ValueError(f"unknown task {task!r}")


HEADLINE = {"heldout_ppl": "perplexity", "cloze_mc": "acc_per_char", "arith_gen": "exact_match"}


def summary_table(results: list[dict]) -> str:
    """Markdown table, one row per model, the headline metric of each task as a column."""
    models = list(dict.fromkeys(r["model"] for r in results))
    task_names = list(dict.fromkeys(r["task"] for r in results))
    by_key = {(r["model"], r["task"]): r["metrics"] for r in results}
    head = "| model | " + " | ".join(f"{t} ({HEADLINE[t]})" for t in task_names) + " |"
    lines = [head, "| --- |" + " ---: |" * len(task_names)]
    for model in models:
        cells = [f"{by_key[(model, t)][HEADLINE[t]]:.4g}" if (model, t) in by_key else "–"
                 for t in task_names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

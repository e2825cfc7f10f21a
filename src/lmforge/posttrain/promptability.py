"""Promptability (Wu et al. 2022, "Continued Pretraining for Better Zero- and Few-Shot
Promptability"): continue pretraining on a mixture of prompted tasks with a trainable soft
prompt (N learned embeddings before the input, Lester et al. 2021), then measure held-out
tasks zero-shot (with the learned prompt) and few-shot by prompt tuning (only a soft prompt
trained, on 16 examples, the model frozen), against the same model without the continued
pretraining (zero-shot from the text instruction alone; prompt tuning from a prompt
initialised from vocabulary embeddings).

Tasks are yes/no questions the workflow generates from the corpus and from numbers, scored by
ranked classification of " yes" / " no" (lm-eval's log-likelihood of each choice); each task's
items are balanced, so chance is 0.5. The held-out tasks resemble the training ones without
repeating or contradicting them (larger-than vs. sum checks, a word vs. a number in the
text, the first word vs. capitals). A held-out task whose answer is another task's negation
(lower case vs. capitals) was tried first: the prompt-pretrained model answered it exactly
backwards, a transfer the comparison should not count.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.tokenize import PAD, load_tokenizer
from lmforge.io.storage import InputError, read_jsonl, write_json, write_jsonl_gz, write_text
from lmforge.model.olmo2 import Olmo2
from lmforge.posttrain import instruct
from lmforge.posttrain.sft import answer_rows
from lmforge.runner import (
    CFG,
    CHECKPOINT,
    METRICS,
    OUT,
    OUT_DIR,
    OUT_JSON,
    OUT_MD,
    SEED,
    TOKENIZER,
    VALID_FRACTION,
    arg,
    command,
    rank_and_world,
)
from lmforge.settings import Section
from lmforge.train.config import TrainConfig
from lmforge.train.job import TRAIN_CFG, train_job


@dataclass(frozen=True)
class PromptTasksConfig(Section):
    SECTION = "promptability.tasks"

    train_per_task: int
    shot_pool: int
    test_per_task: int


@dataclass(frozen=True)
class PromptTuningConfig(Section):
    """The promptability section's evaluation settings (its `train`, `tasks` and `from` are
    the promptable stage's)."""

    SECTION = "promptability"

    prompt_tokens: int
    shots: int
    shot_sets: int
    tune_steps: int
    tune_lr: float

CHOICES = [" yes", " no"]


def _quote(words: list[str]) -> str:
    return '"' + " ".join(words) + '"'


# Each generator returns (question, whether the answer is yes); it is asked for `yes` and
# says so where the sampled text makes the other answer true.
def _sum_check(rng, sentences, yes):
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    c = a + b if yes else a + b + rng.choice([-3, -2, -1, 1, 2, 3])
    return f"Is {a} plus {b} equal to {c}?", yes


def _capitals(rng, sentences, yes):
    words = rng.choice(sentences)[:6]
    text = [w.upper() for w in words] if yes else [w.lower() for w in words]
    return f"Is this text in capital letters? {_quote(text)}", " ".join(text).isupper()


def _has_digit(rng, sentences, yes):
    words = [w for w in rng.choice(sentences)[:8] if not any(c.isdigit() for c in w)]
    if yes:
        words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 99)))
    return f"Does this text contain a number? {_quote(words)}", yes


def _larger(rng, sentences, yes):
    a, b = rng.sample(range(0, 60), 2)
    big, small = max(a, b), min(a, b)
    return (f"Is {big} larger than {small}?" if yes else f"Is {small} larger than {big}?"), yes


def _contains_word(rng, sentences, yes):
    words = rng.choice(sentences)[:8]
    others = [w for w in rng.choice(sentences) if w not in words]
    asked = rng.choice(words) if yes or not others else rng.choice(others)
    return f"Does this text contain the word {asked}? {_quote(words)}", asked in words


def _starts_with(rng, sentences, yes):
    words = rng.choice(sentences)[:8]
    asked = words[0] if yes else rng.choice(rng.choice(sentences))
    return (f"Does this sentence start with the word {asked}? {_quote(words)}",
            asked == words[0])


TRAIN_TASKS: dict[str, Callable] = {"sum_check": _sum_check, "capitals": _capitals,
                                    "has_digit": _has_digit}
HELDOUT_TASKS: dict[str, Callable] = {"larger": _larger, "contains_word": _contains_word,
                                      "starts_with": _starts_with}


def task_items(task: str, n: int, sentences: list[list[str]], rng: random.Random) -> list[dict]:
    """n items of a task, half answered yes, in random order."""
    make = {**TRAIN_TASKS, **HELDOUT_TASKS}[task]
    items = []
    for index in range(n):
        question, yes = make(rng, sentences, index % 2 == 0)
        items.append({"task": task, "input": f"{question}\nAnswer:", "choices": CHOICES,
                      "gold": 0 if yes else 1})
    rng.shuffle(items)
    return items


def make_prompt_tasks(mix_paths: list[str], out_dir: str | Path, cfg: PromptTasksConfig | Mapping,
                      seed: int, valid_fraction: float) -> dict:
    """The training mixture (train.jsonl.gz, training documents' sentences) and each held-out
    task's few-shot pool and test set (heldout.jsonl.gz, held-out documents' sentences)."""
    cfg = PromptTasksConfig.of(cfg)
    rng = random.Random(seed)
    train_sentences, held_sentences = instruct.corpus_sentences(mix_paths, seed, valid_fraction)
    if not train_sentences or not held_sentences:
        raise InputError("the mix has no sentences of 8-24 words for prompted tasks")
    mixture = [item for task in TRAIN_TASKS
               for item in task_items(task, cfg.train_per_task, train_sentences, rng)]
    rng.shuffle(mixture)
    heldout = []
    for task in HELDOUT_TASKS:
        heldout += [{**item, "split": "shots"} for item in
                    task_items(task, cfg.shot_pool, train_sentences, rng)]
        heldout += [{**item, "split": "test"} for item in
                    task_items(task, cfg.test_per_task, held_sentences, rng)]
    out_dir = Path(out_dir)
    return {"train": write_jsonl_gz(out_dir / "train.jsonl.gz", mixture),
            "heldout": write_jsonl_gz(out_dir / "heldout.jsonl.gz", heldout)}


def initial_prompt(decoder: Olmo2, n_tokens: int, seed: int) -> torch.Tensor:
    """The embeddings of sampled vocabulary tokens (Lester et al.'s best initialisation)."""
    vocab = decoder.model.embed_tokens.weight.detach()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, len(vocab), (n_tokens,), generator=generator)
    return vocab[tokens].clone().float()


class SoftPrompted(torch.nn.Module):
    """A decoder with a trainable soft prompt before every input; its checkpoint is the
    decoder's plus the prompt (lmforge.model.checkpoint.save_model)."""

    def __init__(self, decoder: Olmo2, prompt: torch.Tensor):
        super().__init__()
        if not isinstance(decoder, Olmo2):
            raise InputError("soft prompts are built for OLMo 2 models")
        self.decoder = decoder
        self.soft_prompt = torch.nn.Parameter(prompt.clone().float())

    @property
    def cfg(self):
        return self.decoder.cfg

    def forward(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.decoder(input_ids, doc_ids, prefix=self.soft_prompt)

    def num_params(self, non_embedding: bool = True) -> int:
        return self.decoder.num_params(non_embedding) + self.soft_prompt.numel()

    def extra_files(self) -> dict[str, dict]:
        from lmforge.model.checkpoint import PROMPT_FILE

        return {PROMPT_FILE: {"prompt": self.soft_prompt}}

    def flops_per_token(self) -> float:
        return self.decoder.flops_per_token()


def encode(tokenizer, item: dict, choice: int) -> tuple[list[int], list[int]]:
    """Context and choice tokens as lm-eval splits them (the choice's tokens are those of
    context + choice after the context's)."""
    context = tokenizer.encode(item["input"]).ids
    whole = tokenizer.encode(item["input"] + item["choices"][choice]).ids
    return context, whole[len(context):]


def mixture_batches(tokenizer, items: list[dict], pad: int, cfg: TrainConfig | Mapping, seed: int,
                    rank: int = 0, world_size: int = 1) -> Callable[[int, int], tuple]:
    """(inputs, labels) micro-batches of the prompted mixture, the loss on the gold answer's
    tokens, in a seeded order per epoch; a step's global batch is split across ranks."""
    cfg = TrainConfig.of(cfg)
    from lmforge.train.data import epoch_order

    encoded = [encode(tokenizer, item, item["gold"]) for item in items]
    micro = cfg.micro_batch_size
    take = epoch_order(len(encoded), seed)

    def batch(step: int, micro_step: int) -> tuple:
        start = cfg.micro_batch_start(step, micro_step, rank, world_size)
        return answer_rows([encoded[i] for i in take(start, micro)], pad)

    return batch


def choice_logprobs(model: torch.nn.Module, tokenizer, items: list[dict], pad: int,
                    prompt: torch.Tensor | None, batch_size: int = 32) -> torch.Tensor:
    """(items × choices) summed log-probabilities of each choice, with the soft prompt (or
    none) before the input."""
    pairs = [encode(tokenizer, item, c) for item in items for c in range(len(CHOICES))]
    out = []
    for start in range(0, len(pairs), batch_size):
        inputs, labels = answer_rows(pairs[start:start + batch_size], pad)
        logits = model(inputs, prefix=prompt)
        picked = torch.gather(F.log_softmax(logits.float(), -1), -1,
                              labels.clamp(min=0)[..., None])[..., 0]
        out.append((picked * (labels != -100)).sum(-1))
    return torch.cat(out).view(len(items), len(CHOICES))


def accuracy_per_item(model, tokenizer, items: list[dict], pad: int,
                      prompt: torch.Tensor | None) -> np.ndarray:
    with torch.no_grad():
        scores = choice_logprobs(model, tokenizer, items, pad, prompt)
    gold = torch.tensor([item["gold"] for item in items])
    return (scores.argmax(-1) == gold).numpy().astype(float)


def prompt_tune(model: Olmo2, tokenizer, shots: list[dict], pad: int, prompt: torch.Tensor,
                steps: int, lr: float) -> torch.Tensor:
    """Few-shot prompt tuning: only the soft prompt trains (Adam, `steps` full-batch
    steps on the shots' gold answers), the model stays frozen."""
    for param in model.parameters():
        param.requires_grad_(False)
    prompt = torch.nn.Parameter(prompt.clone().float())
    optimizer = torch.optim.Adam([prompt], lr=lr)
    inputs, labels = answer_rows([encode(tokenizer, s, s["gold"]) for s in shots], pad)
    for _ in range(steps):
        logits = model(inputs, prefix=prompt)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prompt.detach()


def evaluate(models: dict[str, tuple[Olmo2, torch.Tensor | None]], tokenizer, heldout: list[dict],
             pad: int, cfg: PromptTuningConfig | Mapping, seed: int) -> dict:
    """Per held-out task and model: zero-shot accuracy (the model's learned prompt, or none)
    and few-shot prompt-tuning accuracy (mean over `shot_sets` draws of `shots` examples),
    with 95% bootstrap intervals over the test items."""
    cfg = PromptTuningConfig.of(cfg)
    from lmforge.posttrain.report import bootstrap

    report: dict = {"zero_shot": {}, "prompt_tuning": {}}
    n_tokens = cfg.prompt_tokens
    for task in HELDOUT_TASKS:
        test = [i for i in heldout if i["task"] == task and i["split"] == "test"]
        pool = [i for i in heldout if i["task"] == task and i["split"] == "shots"]
        if not test or len(pool) < cfg.shots:
            raise InputError(f"{task}: {len(test)} test items and {len(pool)} shots "
                             f"(needs {cfg.shots})")
        zero, tuned = {}, {}
        for name, (model, prompt) in models.items():
            model.eval()
            zero[name] = accuracy_per_item(model, tokenizer, test, pad, prompt)
            draws = []
            for draw in range(cfg.shot_sets):
                shots = random.Random(seed * 1000 + draw).sample(pool, cfg.shots)
                start = prompt if prompt is not None else initial_prompt(model, n_tokens,
                                                                         seed + draw)
                torch.manual_seed(seed + draw)
                learned = prompt_tune(model, tokenizer, shots, pad, start, cfg.tune_steps,
                                      cfg.tune_lr)
                draws.append(accuracy_per_item(model, tokenizer, test, pad, learned))
            tuned[name] = np.mean(draws, axis=0)
        baseline = next(iter(models))
        report["zero_shot"][task] = bootstrap(zero, baseline)
        report["prompt_tuning"][task] = bootstrap(tuned, baseline)
    return report


def markdown(report: dict, baseline: str, treated: str) -> str:
    lines = [f"# Promptability: held-out tasks, {baseline} vs. {treated} (multi-task "
             "continued pretraining with a soft prompt)", "",
             "Accuracy % [95% bootstrap]; chance is 50. Zero-shot: the learned prompt (none for "
             f"{baseline}); prompt tuning: a soft prompt tuned on the shots, model frozen.", "",
             f"| task | setting | {baseline} | {treated} | difference |", "|---|---|---|---|---|"]
    for setting in ("zero_shot", "prompt_tuning"):
        for task, rows in report[setting].items():
            a, b = rows[baseline], rows[treated]
            low, high = b["difference_interval"]
            lines.append(
                f"| {task} | {setting.replace('_', ' ')} | {100 * a['accuracy']:.1f} "
                f"[{100 * a['interval'][0]:.1f}, {100 * a['interval'][1]:.1f}] | "
                f"{100 * b['accuracy']:.1f} [{100 * b['interval'][0]:.1f}, "
                f"{100 * b['interval'][1]:.1f}] | {100 * b['minus_' + baseline]:+.1f} "
                f"[{100 * low:.1f}, {100 * high:.1f}] |")
    return "\n".join(lines) + "\n"


def read_items(path: str | Path) -> list[dict]:
    items = list(read_jsonl(path))
    for index, item in enumerate(items):
        if not {"task", "input", "choices", "gold"} <= set(item):
            raise InputError(f"{path}: item {index} lacks task/input/choices/gold")
    return items


@command("prompt-tasks", arg("--mixes", nargs="+"), OUT_DIR, CFG, SEED, VALID_FRACTION,
         job="prompt_tasks", inputs=("mixes",), outputs=("out_dir",))
def prompt_tasks_command(args, job) -> dict:
    """Prompted training tasks and held-out tasks for the promptability experiment."""
    return make_prompt_tasks(args.mixes, args.out_dir, args.cfg, args.seed, args.valid_fraction)


@command("promptable", CHECKPOINT, arg("--data"), TOKENIZER, TRAIN_CFG,
         arg("--prompt-tokens", type=int), SEED, OUT, METRICS,
         params=lambda args: {**args.cfg.to_dict(), "prompt_tokens": args.prompt_tokens,
                              "from": args.checkpoint, "seed": args.seed},
         inputs=("checkpoint", "data", "tokenizer"), outputs=("out", "metrics"))
def promptable_command(args, job) -> dict:
    """Multi-task continued pretraining with a trainable soft prompt (Wu et al. 2022)."""
    from lmforge.model.checkpoint import load_model

    decoder = load_model(args.checkpoint)
    model = SoftPrompted(decoder, initial_prompt(decoder, args.prompt_tokens, args.seed))
    tokenizer = load_tokenizer(args.tokenizer)
    items = read_items(args.data)
    batches = mixture_batches(tokenizer, items, tokenizer.token_to_id(PAD), args.cfg, args.seed,
                              *rank_and_world())
    return train_job(job, model, batches, args, {"data.items": len(items)})


@command("promptability-report", arg("--base"), arg("--base-name"), arg("--treated"),
         arg("--treated-name"), TOKENIZER, arg("--heldout"), CFG, SEED, OUT_MD, OUT_JSON,
         job="promptability_report", inputs=("base", "treated", "tokenizer", "heldout"),
         outputs=("out_md", "out_json"))
def promptability_report_command(args, job) -> dict:
    """Zero-shot and few-shot prompt-tuning accuracy on held-out tasks, with and without
    the multi-task continued pretraining."""
    from lmforge.model.checkpoint import load_model, load_prompt

    tokenizer = load_tokenizer(args.tokenizer)
    models = {args.base_name: (load_model(args.base), None),
              args.treated_name: (load_model(args.treated), load_prompt(args.treated))}
    report = evaluate(models, tokenizer, read_items(args.heldout), tokenizer.token_to_id(PAD),
                      args.cfg, args.seed)
    write_json(args.out_json, report)
    write_text(args.out_md, markdown(report, args.base_name, args.treated_name))
    return {f"{setting}.{task}.{model}": row["accuracy"]
            for setting, tasks in report.items() for task, rows in tasks.items()
            for model, row in rows.items()}

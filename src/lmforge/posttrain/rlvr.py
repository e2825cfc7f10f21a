"""Reinforcement learning with verifiable rewards (Tulu 3's RLVR), with GRPO's advantages.

Each optimizer step the current policy samples `samples_per_prompt` responses to each of the
step's prompts (temperature, top-p and length from the config; `global_batch_size` counts
responses), a verifier (lmforge.posttrain.instruct) scores
them: `correct_reward` when the answer checks out, and a response that never ends (no
end-of-text within `max_new_tokens`) gets `unterminated_reward` whatever it says, as
open-instruct's non-stop penalty. GRPO (Shao et al. 2024) takes as advantage the reward
normalised within the prompt's group of samples, so no value model is trained; the loss is the
policy gradient on the response tokens plus β × KL to the frozen reference model (the k3
estimator, per token). With one optimisation step per batch the sampling policy is the
current one and the importance ratio is 1 (written out so the gradient is the PPO form's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.posttrain import chat, instruct
from lmforge.posttrain.sft import answer_rows
from lmforge.runner import rank_and_world
from lmforge.train.config import TrainConfig
from lmforge.train.job import post_training_command, train_job

SAMPLING_KEYS = ("samples_per_prompt", "temperature", "top_p", "max_new_tokens")


def prompt_ids(tokenizer, record: dict) -> list[int]:
    return chat.encode(tokenizer, record["messages"], EOS, add_generation_prompt=True)[0]


def sample(model: torch.nn.Module, prompts: list[list[int]], n: int, max_new_tokens: int,
           temperature: float, top_p: float, eos: int, pad: int,
           generator: torch.Generator | None = None) -> list[list[tuple[list[int], bool]]]:
    """n responses to each prompt, decoded together by the model's KV-cache generation: each
    response's token ids (with the closing end-of-text when there is one) and whether it
    ended. Temperature 0 is greedy decoding."""
    rows = [prompt for prompt in prompts for _ in range(n)]
    pairs = model.generate(rows, max_new_tokens, eos, pad=pad, temperature=temperature,
                           top_p=top_p, generator=generator)
    return [pairs[index * n:(index + 1) * n] for index in range(len(prompts))]


def response_text(tokenizer, response: list[int], eos: int) -> str:
    return tokenizer.decode([t for t in response if t != eos])


def rewards(tokenizer, record: dict, responses: list[tuple[list[int], bool]], eos: int,
            cfg: TrainConfig) -> tuple[list[float], list[bool]]:
    """Each response's reward and whether it counts as correct (ended, and accepted by the
    verifier); an unterminated response gets `unterminated_reward` whatever it says."""
    correct = [ended and instruct.verify(record, response_text(tokenizer, ids, eos))
               for ids, ended in responses]
    scores = [cfg.correct_reward * ok if ended else cfg.unterminated_reward
              for ok, (_, ended) in zip(correct, responses)]
    return scores, correct


def group_advantages(scores: torch.Tensor) -> torch.Tensor:
    """GRPO: each reward minus its group's mean over the group's standard deviation (groups
    are rows); a group whose samples all score the same teaches nothing (advantage 0)."""
    return (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-4)


def _token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.gather(F.log_softmax(logits.float(), -1), -1,
                        labels.clamp(min=0)[..., None])[..., 0]


def prompts_per_rank(cfg: TrainConfig) -> int:
    """Prompts each process samples per optimizer step: the step's responses
    (micro_batch_size × grad_accum per process) over samples_per_prompt."""
    responses = cfg.micro_batch_size * cfg.grad_accum
    prompts, rest = divmod(responses, cfg.samples_per_prompt)
    if rest or not prompts:
        raise ValueError(f"each process trains on {responses} responses per step, not a "
                         f"multiple of samples_per_prompt {cfg.samples_per_prompt}")
    return prompts


def grpo_objective(reference: torch.nn.Module, tokenizer, eos: int, pad: int
                   ) -> Callable[[object, dict, dict], tuple[torch.Tensor, dict[str, float], int]]:
    """The RLVR objective for the shared trainer. At a step's first micro-batch the policy
    samples every response of the step (the rollout, as PPO and GRPO collect it before
    updating); each micro-batch then trains on its `micro_batch_size` of them."""
    reference.eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    rollouts: dict[int, dict] = {}

    def rollout(engine, batch: dict, cfg: TrainConfig) -> dict:
        generator = torch.Generator().manual_seed(batch["seed"])
        prompts = [prompt_ids(tokenizer, record) for record in batch["records"]]
        groups = sample(engine.module, prompts, cfg.samples_per_prompt, cfg.max_new_tokens,
                        cfg.temperature, cfg.top_p, eos, pad, generator)
        sequences, scores, correct, ended = [], [], [], []
        for record, prompt, responses in zip(batch["records"], prompts, groups):
            reward, ok = rewards(tokenizer, record, responses, eos, cfg)
            sequences += [(prompt, ids) for ids, _ in responses]
            scores.append(reward)
            correct += ok
            ended += [done for _, done in responses]
        return {"sequences": sequences,
                "advantages": group_advantages(torch.tensor(scores)).flatten(),
                "stats": {"reward": float(np.mean(scores)), "accuracy": float(np.mean(correct)),
                          "unterminated": 1 - float(np.mean(ended))}}

    def objective(engine, batch: dict, cfg: TrainConfig):
        if batch["seed"] not in rollouts:
            rollouts.clear()
            rollouts[batch["seed"]] = rollout(engine, batch, cfg)
        step = rollouts[batch["seed"]]
        part = slice(batch["micro_step"] * cfg.micro_batch_size,
                     (batch["micro_step"] + 1) * cfg.micro_batch_size)
        advantages = step["advantages"][part].to(engine.device)
        inputs, labels = (t.to(engine.device) for t in answer_rows(step["sequences"][part], pad))
        mask = (labels != -100).float()
        policy = _token_logps(engine(inputs), labels)
        with torch.no_grad():
            ref = _token_logps(reference.to(engine.device)(inputs), labels)
        ratio = torch.exp(policy - policy.detach())
        kl = torch.exp(ref - policy) - (ref - policy) - 1
        per_token = -advantages[:, None] * ratio + cfg.beta * kl
        lengths = mask.sum(-1).clamp(min=1)
        loss = ((per_token * mask).sum(-1) / lengths).mean()
        return loss, {"loss": loss.item(), **step["stats"],
                      "kl": ((kl * mask).sum(-1) / lengths).mean().item(),
                      "response_tokens": mask.sum(-1).mean().item()}, int(mask.sum())

    return objective


def prompt_batches(records: list[dict], cfg: TrainConfig | Mapping, seed: int, rank: int = 0,
                   world_size: int = 1) -> Callable[[int, int], dict]:
    """Each micro-batch names its step's prompts for this process (in a seeded order per
    epoch), the seed their sampling uses (a run, or a resumed one, draws the same responses)
    and which slice of the step's responses it trains on."""
    cfg = TrainConfig.of(cfg)
    from lmforge.train.data import epoch_order

    per_rank = prompts_per_rank(cfg)
    take = epoch_order(len(records), seed)

    def batch(step: int, micro_step: int) -> dict:
        start = (step * world_size + rank) * per_rank
        chosen = [records[i] for i in take(start, per_rank)]
        return {"records": chosen, "seed": seed * 1_000_003 + start, "micro_step": micro_step}

    return batch


def greedy_scores(model: torch.nn.Module, tokenizer, records: list[dict], eos: int, pad: int,
                  max_new_tokens: int, batch_size: int = 64) -> list[dict]:
    """Each held-out prompt's greedy response and whether the verifier accepts it."""
    out = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        groups = sample(model, [prompt_ids(tokenizer, r) for r in chunk], 1, max_new_tokens,
                        0.0, 1.0, eos, pad)
        for record, [(ids, ended)] in zip(chunk, groups):
            text = response_text(tokenizer, ids, eos)
            out.append({"dataset": record["dataset"], "response": text, "ended": ended,
                        "correct": ended and instruct.verify(record, text)})
    return out


def heldout_fn(tokenizer, records: list[dict], eos: int, pad: int, max_new_tokens: int
               ) -> Callable[[torch.nn.Module, torch.device], dict]:
    """In-loop evaluation: greedy verifiable accuracy on held-out prompts, overall and per
    verifier."""
    def heldout(model: torch.nn.Module, device) -> dict:
        scored = greedy_scores(model, tokenizer, records, eos, pad, max_new_tokens)
        out = {"valid_accuracy": float(np.mean([s["correct"] for s in scored]))}
        for dataset in sorted({s["dataset"] for s in scored}):
            out[f"valid_accuracy_{dataset}"] = float(np.mean(
                [s["correct"] for s in scored if s["dataset"] == dataset]))
        return out

    return heldout


@post_training_command("rlvr")
def rlvr_command(args, job) -> dict:
    """RLVR with GRPO from a checkpoint (also the frozen KL reference)."""
    from lmforge.model.checkpoint import load_model
    from lmforge.posttrain.instruct import read_records

    if args.cfg.zero_stage == 3:
        raise ValueError("rlvr samples from the policy's whole weights on each process: "
                         "zero_stage 3 (sharded parameters) is not supported, use 1 or 2")
    model, reference = load_model(args.checkpoint), load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer)
    eos, pad = tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD)
    records, valid = read_records(args.train, "rlvr"), read_records(args.valid, "rlvr")
    return train_job(job, model, prompt_batches(records, args.cfg, args.seed, *rank_and_world()),
                     args, {"data.prompts": len(records)},
                     objective=grpo_objective(reference, tokenizer, eos, pad),
                     heldout=heldout_fn(tokenizer, valid, eos, pad, args.cfg.max_new_tokens))

"""Direct preference optimisation as Tulu 3 runs it (open-instruct's `dpo_norm` by default).

The reference model's log-probabilities of every pair are computed once before training and
cached, as open-instruct does, so the frozen copy is not kept in memory beside the policy.
`dpo_norm` averages each response's token log-probabilities (length-normalised, SimPO's and
Tulu 3's choice); `dpo` sums them (Rafailov et al.). The implicit reward of a response is
β · (log π − log π_ref); a pair is ranked correctly when the chosen reward is higher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.io.storage import InputError
from lmforge.posttrain import chat
from lmforge.runner import rank_and_world
from lmforge.train.config import TrainConfig
from lmforge.train.job import post_training_command, train_job

log = logging.getLogger(__name__)
LOSS_TYPES = ("dpo_norm", "dpo")
Encoded = tuple[list[int], list[bool]]


def encode_pairs(tokenizer, records: list[dict], max_len: int
                 ) -> tuple[list[tuple[Encoded, Encoded]], int]:
    """(chosen, rejected) token ids with trained flags (the last assistant turn only: the
    prompt, shared by both, is context), and how many pairs were too long to keep."""
    pairs, too_long = [], 0
    for index, record in enumerate(records):
        encoded = []
        for side in ("chosen", "rejected"):
            try:
                ids, trained = chat.encode(tokenizer, record[side], EOS)
            except InputError as err:
                raise InputError(f"preference pair {index} ({side}): {err}") from None
            prompt_tokens = len(chat.encode(tokenizer, record[side][:-1], EOS,
                                            add_generation_prompt=True)[0])
            encoded.append((ids, [t and i >= prompt_tokens for i, t in enumerate(trained)]))
        if max(len(ids) for ids, _ in encoded) > max_len:
            too_long += 1
        else:
            pairs.append(tuple(encoded))
    if not pairs:
        raise InputError(f"no preference pair fits in {max_len} tokens")
    if too_long:
        log.warning("%d preference pairs longer than %d tokens skipped", too_long, max_len)
    return pairs, too_long


def rows(pairs: list[tuple[Encoded, Encoded]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels (next token where it is trained on, else -100) of the chosen
    responses followed by the rejected ones, right-padded to the longest sequence."""
    sequences = [pair[0] for pair in pairs] + [pair[1] for pair in pairs]
    length = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    for row, (seq, trained) in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, :len(seq)] = torch.where(torch.tensor(trained), torch.tensor(seq), -100)
    return ids[:, :-1], labels[:, 1:]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Each row's summed (or, with `average`, mean) log-probability of its labelled tokens."""
    mask = labels != -100
    picked = torch.gather(F.log_softmax(logits.float(), -1), -1,
                          labels.clamp(min=0)[..., None])[..., 0]
    total = (picked * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


@torch.no_grad()
def reference_logps(model: torch.nn.Module, pairs: list, pad: int, average: bool,
                    batch_size: int = 16) -> torch.Tensor:
    """(pairs × 2) cached log-probabilities of chosen and rejected under the frozen model."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        inputs, labels = rows(pairs[start:start + batch_size], pad)
        logps = sequence_logps(model(inputs.to(device)), labels.to(device), average).cpu()
        out.append(logps.view(2, -1).T)
    model.train(was_training)
    return torch.cat(out)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss from (pairs × 2) chosen/rejected log-probabilities of policy and reference,
    and the implicit rewards' statistics open-instruct logs."""
    rewards = beta * (policy - reference).detach()
    logits = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    loss = -F.logsigmoid(beta * logits).mean()
    return loss, {"chosen_reward": rewards[:, 0].mean(), "rejected_reward": rewards[:, 1].mean(),
                  "reward_margin": (rewards[:, 0] - rewards[:, 1]).mean(),
                  "reward_accuracy": (rewards[:, 0] > rewards[:, 1]).float().mean()}


def check_loss_type(cfg: TrainConfig) -> bool:
    """Whether log-probabilities are length-normalised (dpo_norm)."""
    if cfg.loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo loss_type {cfg.loss_type!r} is not one of {LOSS_TYPES}")
    return cfg.loss_type == "dpo_norm"


def preference_batches(pairs: list, reference: torch.Tensor, pad: int,
                       cfg: TrainConfig | Mapping, seed: int, rank: int = 0, world_size: int = 1
                       ) -> Callable[[int, int], tuple]:
    """Micro-batches (inputs, labels, reference log-probabilities) of `micro_batch_size` pairs
    in a seeded order per epoch; a step's global batch is split across ranks."""
    cfg = TrainConfig.of(cfg)
    from lmforge.train.data import epoch_order

    micro = cfg.micro_batch_size
    take = epoch_order(len(pairs), seed)

    def batch(step: int, micro_step: int) -> tuple:
        start = cfg.micro_batch_start(step, micro_step, rank, world_size)
        chosen = take(start, micro)
        inputs, labels = rows([pairs[i] for i in chosen], pad)
        return inputs, labels, reference[chosen]

    return batch


def objective(engine, batch: tuple, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float], int]:
    """One DPO micro-batch on the shared trainer: policy log-probabilities of both sides in
    one forward pass, against the cached reference ones."""
    inputs, labels, reference = (t.to(engine.device) for t in batch)
    logps = sequence_logps(engine(inputs), labels, check_loss_type(cfg))
    policy = logps.view(2, -1).T
    loss, stats = dpo_loss(policy, reference, cfg.beta)
    return loss, {"loss": loss.item(), **{k: v.item() for k, v in stats.items()}}, int(
        (labels != -100).sum())


def heldout_fn(pairs: list, reference: torch.Tensor, pad: int, cfg: TrainConfig
               ) -> Callable[[torch.nn.Module, torch.device], dict]:
    """Held-out pairs' DPO loss, reward accuracy and margin (the in-loop evaluation)."""
    average = check_loss_type(cfg)

    def heldout(model: torch.nn.Module, device) -> dict:
        policy = reference_logps(model, pairs, pad, average, cfg.micro_batch_size)
        loss, stats = dpo_loss(policy, reference, cfg.beta)
        return {"valid_loss": loss.item(), "valid_reward_accuracy": stats["reward_accuracy"].item(),
                "valid_reward_margin": stats["reward_margin"].item()}

    return heldout


@post_training_command("dpo")
def dpo_command(args, job) -> dict:
    """DPO from a checkpoint (the frozen reference is the same checkpoint)."""
    from lmforge.model.checkpoint import load_model
    from lmforge.posttrain.instruct import read_records

    model = load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer)
    pad, average = tokenizer.token_to_id(PAD), check_loss_type(args.cfg)
    # Inputs drop the last token; max_seq_len caps the pairs kept (Tulu 3: 2048).
    max_len = min(model.cfg.max_seq_len, (args.cfg.max_seq_len or model.cfg.max_seq_len)) + 1
    train_pairs, too_long = encode_pairs(tokenizer, read_records(args.train, "preference"),
                                         max_len)
    valid_pairs, _ = encode_pairs(tokenizer, read_records(args.valid, "preference"), max_len)
    log.info("reference log-probabilities of %d + %d pairs", len(train_pairs), len(valid_pairs))
    reference = reference_logps(model, train_pairs, pad, average)
    valid_reference = reference_logps(model, valid_pairs, pad, average)
    batches = preference_batches(train_pairs, reference, pad, args.cfg, args.seed,
                                 *rank_and_world())
    return train_job(job, model, batches, args,
                     {"data.pairs": len(train_pairs), "data.skipped_too_long": too_long,
                      "data.valid_pairs": len(valid_pairs)},
                     objective=objective,
                     heldout=heldout_fn(valid_pairs, valid_reference, pad, args.cfg))

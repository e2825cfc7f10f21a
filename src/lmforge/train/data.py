"""Training data order: instances of the token memmap in a seeded order that any later stage
continues, split over ranks; and the fixed held-out set of the in-loop loss."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch

from lmforge.model.olmo2 import causal_lm_loss
from lmforge.train.config import TrainConfig

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]


def instance_batches(tokens: np.ndarray, seq_len: int, cfg: TrainConfig | Mapping, seed: int,
                     rank: int = 0, world_size: int = 1, first_instance: int = 0
                     ) -> Callable[[int, int], Batch]:
    """OLMo's data order: the token array cut into `seq_len` instances, shuffled per epoch by a
    seeded permutation; each optimizer step takes the next global batch, split across ranks.
    `first_instance` continues an order another stage began (a grown model after its small
    one), so a staged run and a from-scratch run see the same instances."""
    cfg = TrainConfig.of(cfg)
    n_instances = len(tokens) // seq_len
    if n_instances == 0:
        raise ValueError(f"{len(tokens)} tokens make no instance of {seq_len} tokens")
    micro = cfg.micro_batch_size
    per_step = micro * cfg.grad_accum * world_size
    orders: dict[int, np.ndarray] = {}

    def order(epoch: int) -> np.ndarray:
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n_instances)
        return orders[epoch]

    def batch(step: int, micro_step: int) -> Batch:
        start = first_instance + step * per_step + (micro_step * world_size + rank) * micro
        rows = []
        for position in range(start, start + micro):
            epoch, offset = divmod(position, n_instances)
            index = int(order(epoch)[offset])
            rows.append(np.asarray(tokens[index * seq_len : (index + 1) * seq_len], dtype=np.int64))
        data = torch.from_numpy(np.stack(rows))
        return data[:, :-1], data[:, 1:]

    return batch


def epoch_order(n_items: int, seed: int) -> Callable[[int, int], list[int]]:
    """`take(start, count)`: positions start … start+count−1 of an endless order of n_items
    items, each epoch a permutation seeded by (seed, epoch) — the order SFT examples, DPO
    pairs, RLVR prompts and prompted tasks are drawn in."""
    orders: dict[int, np.ndarray] = {}

    def take(start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, n_items)
            if epoch not in orders:
                orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n_items)
            out.append(int(orders[epoch][offset]))
        return out

    return take


def heldout_loss_fn(tokens: np.ndarray, seq_len: int, instances: int, batch_size: int
                    ) -> Callable[[torch.nn.Module, torch.device], float]:
    """OLMo's in-loop evaluation: the mean next-token loss on the first `instances` held-out
    instances (a fixed set, so points of one curve and of different runs compare)."""
    n = min(instances, len(tokens) // seq_len)
    if n == 0:
        raise ValueError(f"{len(tokens)} held-out tokens make no instance of {seq_len} tokens")
    data = torch.from_numpy(np.asarray(tokens[: n * seq_len], dtype=np.int64).reshape(n, seq_len))

    @torch.no_grad()
    def heldout_loss(model: torch.nn.Module, device) -> float:
        was_training = model.training
        model.eval()
        total = 0.0
        for rows in data.split(batch_size):
            rows = rows.to(device)
            logits = model(rows[:, :-1])
            total += causal_lm_loss(logits, rows[:, 1:]).item() * len(rows)
        model.train(was_training)
        return total / n

    return heldout_loss

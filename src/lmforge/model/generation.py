"""Generation with a KV cache: the one decoding routine of every lmforge decoder (OLMo 2, OLMoE,
a soft-prompted or vision-prefixed one), used by evaluation, RLVR and the VLM.

Prompts of different lengths are left-padded, and the padding is a document of its own, so
each prompt attends only to itself and starts at position 0 — what it would compute alone.
The prompt is run once (prefill); each new token then runs alone against the cached keys and
values of every layer. Greedy (temperature 0) or sampled with temperature and nucleus top-p
from a seeded generator; a row ends at the end-of-text token or when `stop` says so.
A prompt that with its continuation would exceed the model's context keeps its last
`max_seq_len` tokens, recomputed at each step (a sliding window cannot reuse the cache, as
the positions move).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class LayerCache:
    """One attention layer's keys and values so far (batch × heads × length × head_dim)."""

    def __init__(self):
        self.k = self.v = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: the argmax at temperature 0, else a sample."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float().cpu() / temperature, -1)
    if top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0))
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


def _run(decoder, x, cos, sin, mask, caches) -> torch.Tensor:
    for layer, cache in zip(decoder.model.layers, caches):
        out = layer(x, cos, sin, mask, cache)
        x = out[0] if isinstance(out, tuple) else out  # OLMoE blocks also return router logits
    return x


@torch.no_grad()
def generate(decoder, prompts: list[list[int]], max_new_tokens: int, eos: int, *,
             pad: int = 0, temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
             stop: Callable[[list[int]], bool] | None = None) -> list[tuple[list[int], bool]]:
    """Each prompt's new tokens (with the closing `eos` when it ended on it) and whether it did.

    `prefix`: input embeddings before every prompt (batch × n × d_model, an image's tokens, or
    n × d_model, a soft prompt); `stop(tokens)` ends a row early (e.g. at a stop string)."""
    was_training = decoder.training
    decoder.eval()
    try:
        return _generate(decoder, prompts, max_new_tokens, eos, pad, temperature, top_p,
                         generator, prefix, stop)
    finally:
        decoder.train(was_training)


def _generate(decoder, prompts, max_new_tokens, eos, pad, temperature, top_p, generator, prefix,
              stop):
    device = next(decoder.parameters()).device
    limit = decoder.cfg.max_seq_len
    width = max(map(len, prompts))
    padded = any(len(p) != width for p in prompts)
    extra = 0 if prefix is None else prefix.shape[-2]
    if padded or prefix is not None:  # no window: the continuation must fit the context
        max_new_tokens = min(max_new_tokens, limit - width - extra)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt):] = True
    ids, valid = ids.to(device), valid.to(device)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    ended = [False] * len(prompts)
    caches, length, positions = None, 0, None
    for _ in range(max(max_new_tokens, 0)):
        if caches is None or length + 1 > limit - extra:
            window = ids[:, -(limit - extra):]
            keep = valid[:, -(limit - extra):]
            caches = [LayerCache() for _ in decoder.model.layers]
            doc_ids = torch.where(keep, 0, -1) if padded else None
            x, cos, sin, mask = decoder.embed(window, doc_ids, prefix)
            hidden = _run(decoder, x, cos, sin, mask, caches)
            length = window.shape[1]
            positions = (keep.sum(1) - 1) if padded else torch.full((len(prompts),),
                                                                     length + extra - 1)
        else:
            positions = positions + 1
            x = decoder.model.embed_tokens(ids[:, -1:])
            cos = decoder.rope_cos[positions][:, None, None].to(x.dtype)
            sin = decoder.rope_sin[positions][:, None, None].to(x.dtype)
            mask = valid[:, None, None, :] if padded else None
            hidden = _run(decoder, x, cos, sin, mask, caches)
            length += 1
        chosen = next_tokens(decoder.head(hidden[:, -1]), temperature, top_p, generator)
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                new[row].append(token)
                ended[row] = token == eos
                done[row] = ended[row] or (stop is not None and stop(new[row]))
        if all(done):
            break
        ids = torch.cat([ids, chosen[:, None]], 1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
    return list(zip(new, ended))

"""Model growth operators for staged training (arXiv 2203.06211).

Depth growth: each layer is followed by `factor - 1` copies of itself whose two output norms
are set to zero. In an OLMo 2 block the norms sit inside the residual branch
(`h = x + norm(attn(x))`), so a zeroed copy is exactly the identity: the grown model computes
the same function (loss-preserving), and the copies start learning as soon as their norm
weights move away from zero.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lmforge.model import ModelConfig, Olmo2


def grow_depth(model: Olmo2, factor: int) -> Olmo2:
    if factor < 2:
        raise ValueError(f"growth factor must be at least 2, got {factor}")
    cfg = ModelConfig(**{**model.cfg.to_dict(), "n_layers": model.cfg.n_layers * factor})
    grown = Olmo2(cfg)
    layers = []
    for layer in model.model.layers:
        layers.append(copy.deepcopy(layer))
        for _ in range(factor - 1):
            twin = copy.deepcopy(layer)
            with torch.no_grad():
                twin.post_attention_layernorm.weight.zero_()
                twin.post_feedforward_layernorm.weight.zero_()
            layers.append(twin)
    grown.model.layers = nn.ModuleList(layers)
    grown.model.embed_tokens.load_state_dict(model.model.embed_tokens.state_dict())
    grown.model.norm.load_state_dict(model.model.norm.state_dict())
    grown.lm_head.load_state_dict(model.lm_head.state_dict())
    return grown


OPERATORS = {"depth": grow_depth}

"""An OLMoE decoder in one file.

OLMoE (arXiv 2409.02060): pre-norm blocks (`h = x + attn(norm(x))`, `out = h + moe(norm(h))`),
QK-norm over the full query/key projections, and a mixture-of-experts SwiGLU MLP: a linear
router, softmax in fp32, the top-k experts per token (weights renormalised only with
`norm_topk_prob`), every token processed by its experts with no capacity limit (dropless).
Training adds the Switch load-balancing loss and the router z-loss. Parameter names follow
`transformers`' `OlmoeForCausalLM` in its per-expert layout, so checkpoints map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.olmo2 import MLP, Attention, Decoder, ModelConfig, RMSNorm


@dataclass
class MoEConfig(ModelConfig):
    """`mlp_hidden` is each expert's hidden size."""

    n_experts: int = 8
    top_k: int = 2
    norm_topk_prob: bool = False
    load_balancing_weight: float = 0.01
    router_z_loss_weight: float = 0.001

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")


class MoE(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts' weighted outputs, and the router logits (tokens × experts)."""
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.gate(tokens)
        probs = logits.float().softmax(dim=-1)
        weights, chosen = probs.topk(self.cfg.top_k, dim=-1)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        for expert_index, expert in enumerate(self.experts):
            token_index, slot = torch.where(chosen == expert_index)
            if token_index.numel():
                expert_out = expert(tokens[token_index]) * weights[token_index, slot, None]
                out.index_add_(0, token_index, expert_out)
        return out.view_as(x), logits


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss over all layers: n_experts · Σ_i f_i · P_i, with f_i
    the share of top-k assignments and P_i the mean router probability of expert i."""
    logits = torch.cat(router_logits).float()
    n_experts = logits.shape[-1]
    probs = logits.softmax(dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices
    assignments = F.one_hot(chosen, n_experts).sum(dim=1).float().mean(dim=0)
    return n_experts * (assignments * probs.mean(dim=0)).sum()


def router_z_loss(router_logits: list[torch.Tensor]) -> torch.Tensor:
    """ST-MoE's z-loss: mean squared log-partition of the router logits, keeping them small."""
    return torch.cat(router_logits).float().logsumexp(dim=-1).pow(2).mean()


class MoEBlock(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MoE(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        moe_out, router_logits = self.mlp(self.post_attention_layernorm(h))
        return h + moe_out, router_logits


class MoEBackbone(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MoEBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class Olmoe(Decoder):
    def __init__(self, cfg: MoEConfig):
        super().__init__(cfg, MoEBackbone(cfg))

    def forward(self, input_ids: torch.Tensor, return_aux: bool = False,
                doc_ids: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                **loss):
        """Logits (at the tokens' positions, after any `prefix` of input embeddings, see
        Decoder.embed), or given `labels` the loss in chunks (Decoder.head_loss); with
        `return_aux`, also the weighted auxiliary losses by name."""
        x, router_logits = self._blocks(input_ids, doc_ids, prefix)
        out = self.head_loss(x, **loss) if loss else self.head(x)
        if not return_aux:
            return out
        return out, {
            "load_balancing": self.cfg.load_balancing_weight
            * load_balancing_loss(router_logits, self.cfg.top_k),
            "router_z": self.cfg.router_z_loss_weight * router_z_loss(router_logits),
        }

    def hidden_states(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None,
                      prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output; `head` turns any subset of its positions into logits."""
        return self._blocks(input_ids, doc_ids, prefix)[0]

    def _blocks(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, cos, sin, mask = self.embed(input_ids, doc_ids, prefix)
        router_logits = []
        for layer in self.model.layers:
            x, layer_logits = self.run_block(layer, x, cos, sin, mask)
            router_logits.append(layer_logits)
        return (x if prefix is None else x[:, prefix.shape[-2]:]), router_logits

    def num_params(self, non_embedding: bool = True, active: bool = False) -> int:
        """Parameters (without the input embedding); `active`: those one token uses."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.model.embed_tokens.weight.numel()
        if active:
            per_expert = sum(p.numel() for p in self.model.layers[0].mlp.experts[0].parameters())
            total -= self.cfg.n_layers * (self.cfg.n_experts - self.cfg.top_k) * per_expert
        return total

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 × active parameters plus attention (PaLM appendix B)."""
        cfg = self.cfg
        return 6 * self.num_params(active=True) + 12 * cfg.n_layers * cfg.d_model * cfg.max_seq_len

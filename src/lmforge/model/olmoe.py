"""An OLMoE decoder in one file.

OLMoE (arXiv 2409.02060): pre-norm blocks (`h = x + attn(norm(x))`, `out = h + moe(norm(h))`),
QK-norm over the full query/key projections, and a mixture-of-experts SwiGLU MLP: a linear
router, softmax in fp32, the top-k experts per token (weights renormalised only with
`norm_topk_prob`), every token processed by its experts with no capacity limit (dropless).
Training adds the Switch load-balancing loss and the router z-loss. Parameter names follow
`transformers`' `OlmoeForCausalLM`, except that each expert weight is stacked over the experts
(`mlp.experts.gate_proj` is E × I × H), as grouped matmuls need them (megablocks, OLMo-core);
`per_expert_weights` and `stacked_expert_weights` map to and from the per-expert keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.olmo2 import Attention, Decoder, ModelConfig, RMSNorm

EXPERT_COMPUTE = ("auto", "grouped", "padded", "loop")


@dataclass
class MoEConfig(ModelConfig):
    """`mlp_hidden` is each expert's hidden size."""

    n_experts: int = 8
    top_k: int = 2
    norm_topk_prob: bool = False
    load_balancing_weight: float = 0.01
    router_z_loss_weight: float = 0.001
    # How the experts' matmuls run: "grouped" (PyTorch's grouped matmul), "padded" (a batched
    # matmul over groups padded to the largest), "loop" (one per expert), or "auto": grouped
    # where the device has the kernel, else padded. All compute the same function.
    expert_compute: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        if self.expert_compute not in EXPERT_COMPUTE:
            raise ValueError(f"expert_compute={self.expert_compute!r} is not one of "
                             f"{', '.join(EXPERT_COMPUTE)}")


class Experts(nn.Module):
    """The experts' SwiGLU weights, each stacked over the experts (expert e's `gate_proj` is
    `gate_proj[e]`), so one grouped matmul runs every expert, and ZeRO-3 gathers them all when
    this module runs."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        shape = (cfg.n_experts, cfg.mlp_hidden, cfg.d_model)
        self.gate_proj = nn.Parameter(torch.empty(shape))
        self.up_proj = nn.Parameter(torch.empty(shape))
        self.down_proj = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model, cfg.mlp_hidden))
        self.compute = cfg.expert_compute
        self.init_std = cfg.init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As every OLMo weight matrix: N(0, init_std) truncated at 3 std."""
        std = self.init_std
        for weight in self.parameters():
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, tokens: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Each expert's SwiGLU on its rows of `tokens`, which are sorted by expert (`counts`
        rows for expert 0, then expert 1, …)."""
        compute = self.compute
        if compute == "auto":
            compute = "grouped" if self._grouped_mm_runs(tokens) else "padded"
        matmul = {"grouped": _grouped, "padded": _padded, "loop": _looped}[compute]
        hidden = F.silu(matmul(tokens, self.gate_proj, counts)) \
            * matmul(tokens, self.up_proj, counts)
        return matmul(hidden, self.down_proj, counts)

    def _grouped_mm_runs(self, tokens: torch.Tensor) -> bool:
        """Whether PyTorch's grouped matmul takes these operands: it exists, the device and
        dtype are ones it has a kernel for (CPU; CUDA from compute capability 8.0 in bf16) and
        every row stride is a multiple of 16 bytes."""
        if not hasattr(F, "grouped_mm"):
            return False
        if tokens.device.type == "cuda":
            if tokens.dtype != torch.bfloat16 or torch.cuda.get_device_capability() < (8, 0):
                return False
        elif tokens.device.type != "cpu":
            return False
        width = tokens.element_size()
        return all(dim * width % 16 == 0 for dim in self.down_proj.shape[1:])


def _grouped(rows: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """rows @ weight[e]ᵀ for each expert's rows, in one kernel."""
    return F.grouped_mm(rows, weight.transpose(-2, -1), offs=counts.cumsum(0).to(torch.int32))


def _padded(rows: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The same through a batched matmul: each expert's rows padded with zeros to the largest
    group, where no grouped kernel runs."""
    expert = torch.repeat_interleave(torch.arange(len(counts), device=rows.device), counts)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(len(rows), device=rows.device) - starts[expert]
    padded = rows.new_zeros(len(counts), int(counts.max()), rows.shape[-1])
    padded[expert, slot] = rows
    return torch.bmm(padded, weight.transpose(-2, -1))[expert, slot]


def _looped(rows: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The reference: one matmul per expert."""
    groups = rows.split(counts.tolist())
    return torch.cat([group @ weight[e].T for e, group in enumerate(groups)])


class MoE(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)  # the router
        self.experts = Experts(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts' weighted outputs, and the router logits (tokens × experts)."""
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.gate(tokens)
        probs = logits.float().softmax(dim=-1)
        weights, chosen = probs.topk(self.cfg.top_k, dim=-1)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        # Every (token, slot) assignment, sorted by expert (stable: deterministic order).
        assigned = chosen.flatten()
        order = assigned.argsort(stable=True)
        counts = torch.bincount(assigned, minlength=self.cfg.n_experts)
        expert_out = self.experts(tokens[order // self.cfg.top_k], counts)
        by_slot = torch.empty_like(expert_out)
        by_slot[order] = expert_out
        # A fixed sum over each token's slots, not atomic adds: deterministic on every device.
        out = (by_slot.view(-1, self.cfg.top_k, x.shape[-1])
               * weights.to(x.dtype).unsqueeze(-1)).sum(dim=1)
        return out.view_as(x), logits


EXPERT_KEY = re.compile(r"(.*mlp\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def stacked_expert_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our layout from the per-expert keys `save_pretrained` writes
    (`mlp.experts.{e}.gate_proj.weight`) or from `transformers`' in-memory fused layout
    (`mlp.experts.gate_up_proj` (E, 2I, H)); other keys pass through."""
    out, per_expert = {}, {}
    for key, tensor in state.items():
        if match := EXPERT_KEY.match(key):
            prefix, expert, name = match.groups()
            per_expert.setdefault(prefix + name, {})[int(expert)] = tensor
        elif key.endswith("mlp.experts.gate_up_proj"):
            prefix = key.removesuffix("gate_up_proj")
            out[prefix + "gate_proj"], out[prefix + "up_proj"] = tensor.chunk(2, dim=1)
        else:
            out[key] = tensor
    for key, experts in per_expert.items():
        out[key] = torch.stack([experts[e] for e in range(len(experts))])
    return out


def per_expert_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our layout in the per-expert keys `transformers` loads."""
    out = {}
    for key, tensor in state.items():
        prefix, _, name = key.rpartition("mlp.experts.")
        if prefix and name in ("gate_proj", "up_proj", "down_proj"):
            for e, weight in enumerate(tensor):
                out[f"{prefix}mlp.experts.{e}.{name}.weight"] = weight
        else:
            out[key] = tensor
    return out


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

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for layer in self.model.layers:
            layer.mlp.experts.reset_parameters()

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
            per_expert = sum(p[0].numel() for p in self.model.layers[0].mlp.experts.parameters())
            total -= self.cfg.n_layers * (self.cfg.n_experts - self.cfg.top_k) * per_expert
        return total

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 × active parameters plus attention (PaLM appendix B)."""
        cfg = self.cfg
        return 6 * self.num_params(active=True) + 12 * cfg.n_layers * cfg.d_model * cfg.max_seq_len

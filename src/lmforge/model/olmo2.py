"""An OLMo 2 decoder in one file.

OLMo 2 block (arXiv 2501.00656): no pre-norm; RMSNorm on the *outputs* of attention and MLP
inside the residual (`h = x + norm(attn(x))`, `out = h + norm(mlp(h))`), QK-norm over the full
query/key projections before RoPE, SwiGLU MLP, untied output head. Parameter names follow
`transformers`' `Olmo2ForCausalLM` so checkpoints map one to one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_hidden: int = 384
    max_seq_len: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension must be even for RoPE")

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Each token's position within its document, for rows of contiguous packed documents."""
    index = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


def rope_cache(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None):
        """`cache` (lmforge.model.generation.LayerCache): the keys and values of the tokens
        before these, which these attend to; without a mask, new tokens after the first see
        every cached one."""
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x))
        k = self.k_norm(self.k_proj(x))
        v = self.v_proj(x)
        q, k, v = (t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
                   for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(k, v)
        if mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seq == k.shape[2])
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None):
        h = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(h))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class Decoder(nn.Module):
    """What OLMo 2 and OLMoE share: a backbone (`embed_tokens`, `layers`, `norm`), an untied
    output head, the RoPE tables, truncated-normal init, and the forward pass around the blocks."""

    def __init__(self, cfg: ModelConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.model = backbone
        self.lm_head = OutputHead(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_cache(cfg.max_seq_len, cfg.d_model // cfg.n_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OLMo 2 init: every weight matrix ~ N(0, init_std) (truncated at 3 std), norms at 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = self.cfg.init_std
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def embed(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None,
              prefix: torch.Tensor | None = None):
        """Token embeddings, the RoPE tables for this length and the attention mask (None:
        causal). `doc_ids` (batch × seq) marks packed documents: each attends only to itself
        and counts positions from its own start, so a packed row computes what its documents
        would alone. `prefix` — input embeddings put before the token ids: n × d_model for
        every row (a soft prompt) or batch × n × d_model (each row's image tokens)."""
        x = self.model.embed_tokens(input_ids)
        if prefix is not None:
            if doc_ids is not None:
                raise ValueError("a soft prompt prefix and packed documents do not combine")
            x = torch.cat([prefix.to(x.dtype).expand(len(x), -1, -1), x], 1)
        seq = x.shape[1]
        if seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {seq} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        if doc_ids is None:
            return x, self.rope_cos[:seq].to(x.dtype), self.rope_sin[:seq].to(x.dtype), None
        positions = document_positions(doc_ids)
        cos = self.rope_cos[positions].unsqueeze(1).to(x.dtype)
        sin = self.rope_sin[positions].unsqueeze(1).to(x.dtype)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
        return x, cos, sin, mask.unsqueeze(1)

    def run_block(self, block: nn.Module, x: torch.Tensor, *args):
        """A block's forward; with `activation_checkpointing` (set by the trainer) while
        training, only its input is kept and its activations are recomputed in backward."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.norm(x))

    def head_loss(self, x: torch.Tensor, labels: torch.Tensor, z_weight: float,
                  chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`cross_entropy_and_z_loss` of the head's logits, computed in chunks of tokens
        (_ChunkedHeadLoss): ce + z_weight · z, ce, z."""
        return self.lm_head(self.model.norm(x), labels, z_weight, chunk_tokens)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, eos: int, **options
                 ) -> list[tuple[list[int], bool]]:
        """New tokens for each prompt, with a KV cache (lmforge.model.generation.generate)."""
        from lmforge.model.generation import generate

        return generate(self, prompts, max_new_tokens, eos, **options)


class Olmo2(Decoder):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, Backbone(cfg))

    def forward(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None, **loss):
        """Logits; given `labels` (with `z_weight`, `chunk_tokens`), the loss in chunks
        instead (Decoder.head_loss)."""
        x = self.hidden_states(input_ids, doc_ids, prefix)
        return self.head_loss(x, **loss) if loss else self.head(x)

    def hidden_states(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None,
                      prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output at the tokens' positions (the prefix's dropped); `head`
        turns any subset of its positions into logits."""
        x, cos, sin, mask = self.embed(input_ids, doc_ids, prefix)
        for layer in self.model.layers:
            x = self.run_block(layer, x, cos, sin, mask)
        return x if prefix is None else x[:, prefix.shape[-2]:]

    def num_params(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.model.embed_tokens.weight.numel() if non_embedding else total

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N plus attention (PaLM appendix B), for MFU estimates."""
        cfg = self.cfg
        return 6 * self.num_params() + 12 * cfg.n_layers * cfg.d_model * cfg.max_seq_len


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; labels are already shifted, -100 is ignored."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


def cross_entropy_and_z_loss(logits: torch.Tensor,
                             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy and OLMo's z-loss (mean squared log-partition) from one
    fp32 copy of the logits: cross-entropy is logsumexp minus the target logit, so autograd keeps
    4 bytes per vocabulary entry and token instead of two fp32 copies (log_softmax's output and
    the z-loss's input) — 6 GiB less for OLMo 2 1B at 16k tokens per micro-batch."""
    logits = logits.float()
    mask = (labels != -100).float()
    log_partition = logits.logsumexp(-1)
    target = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    count = mask.sum()
    return ((log_partition - target) * mask).sum() / count, \
        (log_partition.pow(2) * mask).sum() / count


class _ChunkedHeadLoss(torch.autograd.Function):
    """`cross_entropy_and_z_loss` of `hidden @ weight.T`, one chunk of tokens at a time, with
    the gradients computed in the forward pass (as Liger's fused linear cross-entropy does): no
    token's logits outlive its chunk, so the head holds one chunk × vocabulary of fp32 logits
    instead of every token's (about three copies in the eager loss's backward). The weight's
    gradient is summed over chunks in fp32. Returns ce + z_weight · z, ce and z."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, z_weight: float, chunk_tokens: int):
        flat = hidden.reshape(-1, hidden.shape[-1])
        targets = labels.reshape(-1)
        count = (targets != -100).sum()
        with_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(flat) if with_grads else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_grads else None
        ce_sum = z_sum = torch.zeros((), dtype=torch.float32, device=flat.device)
        for start in range(0, len(flat), chunk_tokens):
            part, y = flat[start:start + chunk_tokens], targets[start:start + chunk_tokens]
            logits = (part @ weight.T).float()
            mask = (y != -100).float()
            log_partition = logits.logsumexp(-1)
            target = logits.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            ce_sum = ce_sum + ((log_partition - target) * mask).sum()
            z_sum = z_sum + (log_partition.pow(2) * mask).sum()
            if with_grads:
                # d(ce + w·z)/d logits = softmax · (1 + 2w·lse) − onehot(target), per token
                # over `count`.
                scale = mask / count
                grad = (logits - log_partition.unsqueeze(-1)).exp_()
                grad.mul_((scale * (1 + 2 * z_weight * log_partition)).unsqueeze(-1))
                grad.scatter_add_(-1, y.clamp(min=0).unsqueeze(-1), -scale.unsqueeze(-1))
                grad = grad.to(flat.dtype)
                grad_hidden[start:start + chunk_tokens] = grad @ weight
                grad_weight.add_((grad.T @ part).float())
        ce, z = ce_sum / count, z_sum / count
        if with_grads:
            ctx.save_for_backward(grad_hidden.view_as(hidden), grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(ce, z)
        return ce + z_weight * z, ce, z

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_z):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss.to(grad_hidden.dtype),
                grad_weight * grad_loss.to(grad_weight.dtype), None, None, None)


class OutputHead(nn.Linear):
    """The untied output projection; given labels, the loss in chunks instead of the logits.
    The loss runs inside this module's forward so that ZeRO-3 gathers the weight for it."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                z_weight: float = 0.0, chunk_tokens: int = 0):
        if labels is None:
            return super().forward(x)
        return _ChunkedHeadLoss.apply(x, self.weight, labels, z_weight, chunk_tokens)


def perplexity_from_loss(loss: float) -> float:
    return math.exp(min(loss, 50.0))

"""Hugging Face format: `config.json` + safetensors that `transformers`' `Olmo2ForCausalLM` /
`OlmoeForCausalLM` load, and the reverse (including sharded checkpoints and the fused expert
tensors `transformers` keeps in memory).

Our parameter names are `transformers`' names except OLMoE's experts, which we stack per
weight: they are written in the per-expert layout `save_pretrained` writes and read from it or
from the fused one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.io.storage import InputError, atomic_dir
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.model.olmoe import MoEConfig, Olmoe, per_expert_weights, stacked_expert_weights
from lmforge.runner import CHECKPOINT, OUT, arg, command

# Published shapes (OLMo 2 and OLMoE papers, the official configs), beside the tiny CPU ones.
PRESETS: dict[str, dict] = {
    "olmo2-tiny": {"d_model": 128, "n_layers": 2, "n_heads": 4, "mlp_hidden": 384},
    "olmo2-1b": {"d_model": 2048, "n_layers": 16, "n_heads": 16, "mlp_hidden": 8192,
                 "vocab_size": 100352, "max_seq_len": 4096, "rope_theta": 500000.0},
    "olmo2-7b": {"d_model": 4096, "n_layers": 32, "n_heads": 32, "mlp_hidden": 11008,
                 "vocab_size": 100352, "max_seq_len": 4096, "rope_theta": 500000.0},
    "olmo2-13b": {"d_model": 5120, "n_layers": 40, "n_heads": 40, "mlp_hidden": 13824,
                  "vocab_size": 100352, "max_seq_len": 4096, "rope_theta": 500000.0},
    "olmoe-tiny": {"d_model": 128, "n_layers": 2, "n_heads": 4, "mlp_hidden": 96,
                   "n_experts": 8, "top_k": 2},
    "olmoe-1b-7b": {"d_model": 2048, "n_layers": 16, "n_heads": 16, "mlp_hidden": 1024,
                    "n_experts": 64, "top_k": 8, "vocab_size": 50304, "max_seq_len": 4096,
                    "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
}


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    return (MoEConfig if name.startswith("olmoe") else ModelConfig)(**values)


def build(cfg: ModelConfig) -> Olmo2 | Olmoe:
    return Olmoe(cfg) if isinstance(cfg, MoEConfig) else Olmo2(cfg)


def hf_config(cfg: ModelConfig) -> dict:
    common = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "rope_theta": cfg.rope_theta, "initializer_range": cfg.init_std, "hidden_act": "silu",
        "attention_bias": False, "tie_word_embeddings": False, "torch_dtype": "float32",
    }
    if isinstance(cfg, MoEConfig):
        return {**common, "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
                "num_experts": cfg.n_experts, "num_experts_per_tok": cfg.top_k,
                "norm_topk_prob": cfg.norm_topk_prob,
                "router_aux_loss_coef": cfg.load_balancing_weight, "clip_qkv": None}
    return {**common, "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2"}


def export_hf(model: Olmo2 | Olmoe, directory: str | Path,
              tokenizer: str | Path | None = None) -> None:
    """Write `config.json` and `model.safetensors` (atomically, as one directory); with a
    `tokenizer.json`, also the files `AutoTokenizer` loads, so the directory is complete for
    `transformers`, lm-evaluation-harness or vLLM."""
    from lmforge.data.tokenize import EOS, PAD
    from lmforge.posttrain.chat import tokenizer_config

    state = {k: v.detach().contiguous().cpu()
             for k, v in per_expert_weights(model.state_dict()).items()}
    with atomic_dir(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                tokenizer_config(EOS, PAD, model.cfg.max_seq_len), indent=2) + "\n")


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def import_hf(directory: str | Path) -> Olmo2 | Olmoe:
    """Our model from a Hugging Face OLMo 2 or OLMoE directory."""
    directory = Path(directory)
    try:
        hf = json.loads((directory / "config.json").read_text())
        state = _read_state(directory)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{directory}: not a readable Hugging Face checkpoint ({err})") from None
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise InputError(f"{directory}: grouped-query attention is not supported")
    if hf.get("tie_word_embeddings") or hf.get("attention_bias") or hf.get("clip_qkv"):
        raise InputError(f"{directory}: tied embeddings, attention biases and clip_qkv are "
                         "not part of OLMo 2 / OLMoE as lmforge builds them")
    rope = hf.get("rope_parameters") or {}
    common = {
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"], "n_heads": hf["num_attention_heads"],
        "mlp_hidden": hf["intermediate_size"], "max_seq_len": hf["max_position_embeddings"],
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "rms_norm_eps": hf["rms_norm_eps"], "init_std": hf.get("initializer_range", 0.02),
    }
    model_type = hf.get("model_type")
    if model_type == "olmoe":
        cfg = MoEConfig(**common, n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"],
                        norm_topk_prob=hf.get("norm_topk_prob", False),
                        load_balancing_weight=hf.get("router_aux_loss_coef", 0.01))
        state = stacked_expert_weights(state)
    elif model_type == "olmo2":
        cfg = ModelConfig(**common)
    else:
        raise InputError(f"{directory}: model_type {model_type!r} is not olmo2 or olmoe")
    model = build(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{directory}: weights do not match the config (missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return model


@command("export-hf", CHECKPOINT, OUT, arg("--tokenizer", default=None), tracked=False)
def export_hf_command(args, job) -> None:
    """Write a checkpoint in Hugging Face format (Olmo2ForCausalLM / OlmoeForCausalLM)."""
    from lmforge.model.checkpoint import load_model

    export_hf(load_model(args.checkpoint), args.out, tokenizer=args.tokenizer)
    logging.getLogger(__name__).info("exported %s to %s", args.checkpoint, args.out)

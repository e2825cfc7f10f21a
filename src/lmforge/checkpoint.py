"""Model checkpoints: `config.json` + `model.safetensors` (+ DeepSpeed state beside them).

`load_model` also reads a Hugging Face OLMo 2 / OLMoE directory (its config has `model_type`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.model import ModelConfig, Olmo2
from lmforge.olmoe import MoEConfig, Olmoe
from lmforge.storage import InputError


def save_model(model: Olmo2 | Olmoe, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture = "olmoe" if isinstance(model, Olmoe) else "olmo2"
    config = {"architecture": architecture, **model.cfg.to_dict()}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_model(directory: str | Path) -> Olmo2 | Olmoe:
    from lmforge.hf import build, import_hf

    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
        if "model_type" in config:
            return import_hf(directory)
        architecture = config.pop("architecture", "olmo2")
        cfg = (MoEConfig if architecture == "olmoe" else ModelConfig)(**config)
        state = load_file(str(directory / "model.safetensors"))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise InputError(f"{directory}: not a readable lmforge checkpoint ({err})") from None
    model = build(cfg)
    model.load_state_dict(state, strict=True)
    return model


def init_model(cfg: dict, vocab_size: int, seed: int, n_layers: int | None = None) -> Olmo2:
    torch.manual_seed(seed)
    model_cfg = ModelConfig(vocab_size=vocab_size, **cfg)
    if n_layers is not None:
        model_cfg.n_layers = n_layers
    return Olmo2(model_cfg)

"""Model checkpoints: `config.json` + `model.safetensors` (+ DeepSpeed state beside them)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.model import ModelConfig, Olmo2
from lmforge.storage import InputError


def save_model(model: Olmo2, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_model(directory: str | Path) -> Olmo2:
    directory = Path(directory)
    try:
        cfg = ModelConfig(**json.loads((directory / "config.json").read_text()))
        state = load_file(str(directory / "model.safetensors"))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise InputError(f"{directory}: not a readable lmforge checkpoint ({err})") from None
    model = Olmo2(cfg)
    model.load_state_dict(state, strict=True)
    return model


def init_model(cfg: dict, vocab_size: int, seed: int, n_layers: int | None = None) -> Olmo2:
    torch.manual_seed(seed)
    model_cfg = ModelConfig(vocab_size=vocab_size, **cfg)
    if n_layers is not None:
        model_cfg.n_layers = n_layers
    return Olmo2(model_cfg)

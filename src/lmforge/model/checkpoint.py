"""Model checkpoints: `config.json` + `model.safetensors` (+ DeepSpeed state beside them).

`load_model` also reads a Hugging Face OLMo 2 / OLMoE directory (its config has `model_type`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.io.storage import InputError, atomic_dir
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.model.olmoe import MoEConfig, Olmoe, stacked_expert_weights
from lmforge.runner import OUT, arg, command

PROMPT_FILE = "soft_prompt.safetensors"


def save_model(model: Olmo2 | Olmoe, directory: str | Path) -> None:
    """The model's config and weights. A decoder wrapped with parts around it (a soft prompt,
    lmforge.posttrain.promptability; a vision tower, lmforge.vision.molmo) is saved as the
    decoder plus the wrapper's own files, so the decoder loads like any other."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "decoder"):
        for name, tensors in model.extra_files().items():
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                      str(directory / name))
        for name, config in getattr(model, "extra_configs", dict)().items():
            (directory / name).write_text(json.dumps(config, indent=2) + "\n")
        model = model.decoder
    architecture = "olmoe" if isinstance(model, Olmoe) else "olmo2"
    config = {"architecture": architecture, **model.cfg.to_dict()}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_prompt(directory: str | Path) -> torch.Tensor:
    path = Path(directory) / PROMPT_FILE
    if not path.is_file():
        raise InputError(f"{directory}: no soft prompt ({PROMPT_FILE})")
    return load_file(str(path))["prompt"]


MOMENTS_FILE = "optimizer_moments.safetensors"


def save_moments(moments: dict, step: int, directory: str | Path) -> None:
    """AdamW's moments by parameter name, and the step they were accumulated over, in a file
    any framework reads (the DeepSpeed state beside it holds them per ZeRO partition)."""
    tensors = {f"{key}/{name}": value.contiguous() for name, state in moments.items()
               for key, value in state.items()}
    save_file(tensors, str(Path(directory) / MOMENTS_FILE), metadata={"step": str(step)})


def load_moments(directory: str | Path) -> tuple[dict, int]:
    from safetensors import safe_open

    path = Path(directory) / MOMENTS_FILE
    if not path.is_file():
        raise InputError(f"{directory}: no optimizer moments ({MOMENTS_FILE}); train the stage "
                         "with save_moments: true to grow from it")
    moments: dict[str, dict] = {}
    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
        for key in f.keys():
            kind, name = key.split("/", 1)
            moments.setdefault(name, {})[kind] = f.get_tensor(key)
    return moments, step


def load_model(directory: str | Path) -> Olmo2 | Olmoe:
    from lmforge.model.hf import build, import_hf

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
    # Checkpoints written before the experts were stacked hold them per expert.
    model.load_state_dict(stacked_expert_weights(state), strict=True)
    return model


def read_architecture(directory: str | Path) -> tuple[str, dict]:
    """A checkpoint's architecture ("olmo2" / "olmoe") and model config, without its weights."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{directory}: not a readable lmforge checkpoint ({err})") from None
    return config.pop("architecture", "olmo2"), config


def init_model(cfg: dict, seed: int, layers_factor: int = 1, width_factor: int = 1,
               architecture: str = "olmo2") -> Olmo2 | Olmoe:
    """A fresh model; `layers_factor` / `width_factor` size it as a grown model (the
    from-scratch baseline of staged training)."""
    from lmforge.model.hf import build

    torch.manual_seed(seed)
    sized = {**cfg, "n_layers": cfg["n_layers"] * layers_factor,
             **{key: cfg[key] * width_factor for key in ("d_model", "n_heads", "mlp_hidden")}}
    return build((MoEConfig if architecture == "olmoe" else ModelConfig)(**sized))


def soup(directories: list[str | Path]) -> Olmo2 | Olmoe:
    """The uniform average of the weights of models with one architecture (a model soup,
    Wortsman et al. 2022, as OLMo 2 averages its mid-training runs); no optimizer state."""
    if len(directories) < 2:
        raise InputError("a soup needs at least two checkpoints")
    models = [load_model(d) for d in directories]
    for directory, model in zip(directories[1:], models[1:]):
        if model.cfg != models[0].cfg or type(model) is not type(models[0]):
            raise InputError(f"{directory}: another architecture than {directories[0]} "
                             f"({model.cfg} vs {models[0].cfg}): cannot average")
    states = [m.state_dict() for m in models]
    averaged = {name: torch.stack([s[name].float() for s in states]).mean(0).to(tensor.dtype)
                for name, tensor in states[0].items()}
    models[0].load_state_dict(averaged)
    return models[0]


@command("soup", arg("--checkpoints", nargs="+"), OUT,
         job=lambda args: f"soup/{Path(args.out).name}",
         params=lambda args: {"ingredients": args.checkpoints}, inputs=("checkpoints",),
         outputs=("out",))
def soup_command(args, job) -> dict:
    """Average checkpoints' weights uniformly (a model soup of mid-training runs)."""
    model = soup(args.checkpoints)
    with atomic_dir(args.out) as tmp:
        save_model(model, tmp)
    return {"ingredients": len(args.checkpoints)}

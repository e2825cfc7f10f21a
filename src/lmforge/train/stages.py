"""Each training stage's config as the workflow derives it from the whole config: the staged
schedule that growth continues, the from-scratch baseline of the grown size, the world sizes.
Plain dictionaries and no model code, so the Snakefile reads it quickly."""

from __future__ import annotations

import os

from lmforge.io.storage import InputError
from lmforge.train.config import resolve_batch

# Training stages of the workflow: where their settings live and how their model is sized.
# Training stages: their config section and the launch layout they use.
STAGES = {"pretrain": (("pretrain",), "pretrain"), "grow": (("grow", "train"), "grow"),
          "baseline": (None, "grow"), "sft": (("sft", "train"), "sft"),
          "anneal": (("midtrain", "train"), "anneal"), "dpo": (("dpo", "train"), "dpo"),
          "rlvr": (("rlvr", "train"), "rlvr")}


GROWN_STAGES = ("grow", "baseline", "sft", "dpo", "rlvr")


GROWN_LAYOUT = ("micro_batch_size", "zero_stage", "compile", "peak_flops")


def merge_config(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base` key by key, as Snakemake merges --configfile."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merge_config(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out


def world_size_of(config: dict, stage: str) -> int:
    launch = config["launch"][STAGES[stage][1]]
    return launch["nodes"] * launch["processes_per_node"]


SCHEDULE_KEYS = ("lr", "min_lr_ratio", "schedule")


def _continues(config: dict) -> bool:
    """Whether the grow stage continues pretraining's learning-rate schedule."""
    return config["grow"].get("continue_schedule", False)


def pretrain_train_config(config: dict) -> dict:
    """Pretraining's config; when growth continues its schedule, the schedule spans both
    stages (the small model stops part-way, as in staged training)."""
    pretrain = config["pretrain"]
    if not _continues(config):
        return pretrain
    return {**pretrain, "schedule_steps": pretrain["steps"] + config["grow"]["train"]["steps"]}


def grow_train_config(config: dict) -> dict:
    """The grow stage's config. With `grow.continue_schedule` it runs pretraining's schedule
    on from where pretraining stopped (its own warmup_steps re-warm), as Shen et al. do;
    schedule settings that contradict pretraining's are an error, not silently replaced."""
    grow, pretrain = config["grow"]["train"], config["pretrain"]
    if not _continues(config):
        return grow
    differ = [k for k in SCHEDULE_KEYS
              if grow.get(k, "cosine" if k == "schedule" else None)
              != pretrain.get(k, "cosine" if k == "schedule" else None)]
    if differ:
        raise InputError(f"grow.continue_schedule: grow.train {', '.join(differ)} differ from "
                         "pretrain's; the continued schedule is pretraining's")
    if _global_batch_of(config, "grow") != _global_batch_of(config, "pretrain"):
        raise InputError("grow.continue_schedule needs the grow stage's global batch to equal "
                         "pretraining's (the schedule counts steps)")
    return {**grow, "warmup_steps": pretrain["warmup_steps"],
            "schedule_steps": pretrain["steps"] + grow["steps"],
            "schedule_offset": pretrain["steps"], "rewarm_steps": grow["warmup_steps"]}


def _global_batch_of(config: dict, stage: str) -> int:

    world = world_size_of(config, stage)
    cfg = resolve_batch(config["pretrain"] if stage == "pretrain" else config["grow"]["train"],
                        world)
    return cfg.micro_batch_size * cfg.grad_accum * world


def baseline_train_config(config: dict) -> dict:
    """Training config of the from-scratch baseline of the grown size: pretraining's
    hyperparameters and global batch, the grow stage's per-device layout, for as many
    instances as pretrain + grow together (with the same seed the same instances, as the grown
    stage continues the small one's data order)."""
    batch = _global_batch_of(config, "pretrain")
    instances = batch * config["pretrain"]["steps"] + (
        _global_batch_of(config, "grow") * config["grow"]["train"]["steps"])
    steps, rest = divmod(instances, batch)
    if rest:
        raise InputError(f"pretrain + grow train {instances} instances, not a multiple of "
                         f"pretraining's global batch {batch}: the baseline cannot match them")
    cfg = {k: v for k, v in config["pretrain"].items() if k not in ("grad_accum", "save_moments")}
    # How the grown size is laid out on its devices comes from the grow stage.
    layout = {k: v for k, v in config["grow"]["train"].items() if k in GROWN_LAYOUT}
    return {**cfg, **layout, "steps": steps, "global_batch_size": batch}


def stage_train_config(config: dict, stage: str) -> dict:
    special = {"pretrain": pretrain_train_config, "grow": grow_train_config,
               "baseline": baseline_train_config}
    if stage in special:
        return special[stage](config)
    section = config
    for key in STAGES[stage][0]:
        section = section[key]
    return section


def merged_config(paths: list[str | os.PathLike], base: str | os.PathLike) -> dict:
    """The workflow's config as Snakemake sees it: the base file, then each --configfile
    merged over it key by key, validated against the workflow's schema."""
    import jsonschema
    import yaml

    config = yaml.safe_load(open(base))
    for path in paths:
        config = merge_config(config, yaml.safe_load(open(path)) or {})
    schema = yaml.safe_load(open(os.path.join(os.path.dirname(base), "..", "workflow",
                                              "schemas", "config.schema.yaml")))
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise InputError(f"config {where}: {err.message}") from None
    return config

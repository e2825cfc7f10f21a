"""Memory and compute plan of a training run, before any work: `lmforge plan` prints it and the
trainer refuses a run that cannot fit the device.

Memory per device (mixed-precision AdamW as DeepSpeed keeps it, Rajbhandari et al. 2020):
weights in the training dtype, fp32 master weights when that dtype is bf16, gradients in the
training dtype, two fp32 AdamW moments; ZeRO stage 1 shards the optimizer state (master weights
and moments) over the data-parallel ranks, stage 2 also the gradients, stage 3 also the weights.

Activations are not taken from a textbook formula (Korthikanti et al.'s 34·s·b·h bytes per layer
is half of what an OLMo 2 block keeps with its fp32 norms and full-width QK-norm): one block of
the model's real shape runs a short sequence on the CPU in the training dtype and every tensor
autograd saves for backward is counted (eager PyTorch; compiled blocks keep less). With a fused
attention kernel that is linear in the sequence length. The head adds the final norm and, per
vocabulary entry and token, the fp32 logits the loss keeps plus what the start of backward holds
at once: three fp32 temporaries of the logsumexp gradient and the logits' gradient in the
training dtype. On an H200 this predicts the measured peak of OLMo 2 1B (84.0 vs 84.3 GiB eager,
bf16, 16k tokens per micro-batch) and of the OLMoE-1B-7B shape (36.9 vs 36.7 GiB).
FLOPs per step: the model's training FLOPs per token times the tokens of one global batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from lmforge.io.storage import InputError
from lmforge.model.olmo2 import ModelConfig
from lmforge.runner import arg, command, json_object
from lmforge.train.config import TrainConfig

GIB = 1024**3


def estimate(model_cfg: ModelConfig, train_cfg: TrainConfig | Mapping, world_size: int = 1
             ) -> dict:
    train_cfg = TrainConfig.of(train_cfg)
    from lmforge.model.hf import build

    with torch.device("meta"):
        model = build(model_cfg)
    params = model.num_params(non_embedding=False)
    bf16 = train_cfg.precision == "bf16"
    width = 2 if bf16 else 4
    stage = train_cfg.zero_stage
    shard = lambda stage_from: world_size if stage >= stage_from else 1  # noqa: E731
    weights = params * width / shard(3)
    grads = params * width / shard(2)
    optimizer = params * ((4 if bf16 else 0) + 8) / shard(1)
    # A DPO micro-batch holds both sides of each pair; RLVR keeps the frozen reference model
    # beside the policy.
    rows = train_cfg.micro_batch_size * (2 if train_cfg.loss_type is not None else 1)
    if train_cfg.samples_per_prompt is not None:
        weights += params * width
    tokens = min(model_cfg.max_seq_len, train_cfg.max_seq_len or model_cfg.max_seq_len) * rows
    dtype = torch.bfloat16 if bf16 else torch.float32
    activations = tokens * (model_cfg.n_layers * block_activation_bytes_per_token(model_cfg, dtype)
                            + model_cfg.d_model * (4 + 2 * width)
                            + model_cfg.vocab_size * (4 + 3 * 4 + width))
    tokens_per_step = tokens * train_cfg.grad_accum * world_size
    return {
        "parameters": params,
        "active_parameters": model.num_params(non_embedding=False, active=True)
        if hasattr(model.cfg, "n_experts") else params,
        "weights_gib": weights / GIB, "gradients_gib": grads / GIB,
        "optimizer_gib": optimizer / GIB, "activations_gib": activations / GIB,
        "total_gib": (weights + grads + optimizer + activations) / GIB,
        "tokens_per_step": tokens_per_step,
        "flops_per_step": model.flops_per_token() * tokens_per_step,
    }


def block_activation_bytes_per_token(model_cfg: ModelConfig, dtype: torch.dtype,
                                     tokens: int = 64) -> float:
    """Bytes autograd keeps for backward per token in one block, counted on the autograd graph
    of one block of the real shape (weights allocated, not initialised: only shapes matter)."""
    from lmforge.model.olmo2 import Block, rope_cache
    from lmforge.model.olmoe import MoEBlock, MoEConfig

    with torch.device("meta"):
        block = (MoEBlock if isinstance(model_cfg, MoEConfig) else Block)(model_cfg)
    block = block.to_empty(device="cpu").to(dtype)
    cos, sin = (t.to(dtype) for t in rope_cache(tokens, model_cfg.d_model // model_cfg.n_heads,
                                                 model_cfg.rope_theta))
    shared = {t.untyped_storage().data_ptr() for t in (*block.parameters(), cos, sin)}
    saved: dict[int, int] = {}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in shared:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.zeros(1, tokens, model_cfg.d_model, dtype=dtype, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        block(x, cos, sin)
    return sum(saved.values()) / tokens


def device_memory_bytes(device) -> int:
    """Memory of one training device: the GPU's, or this machine's RAM on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(plan: dict, memory_bytes: int) -> None:
    if plan["total_gib"] * GIB > memory_bytes:
        raise InputError(
            f"the run needs about {plan['total_gib']:.1f} GiB per device (weights "
            f"{plan['weights_gib']:.1f}, gradients {plan['gradients_gib']:.1f}, optimizer "
            f"{plan['optimizer_gib']:.1f}, activations {plan['activations_gib']:.1f}) but the "
            f"device has {memory_bytes / GIB:.1f} GiB: lower micro_batch_size, use bf16, a "
            "higher zero_stage or more devices")


def markdown(plan: dict) -> str:
    rows = [("parameters", f"{plan['parameters'] / 1e9:.3f} B"),
            ("active parameters per token", f"{plan['active_parameters'] / 1e9:.3f} B")]
    rows += [(name, f"{plan[f'{name}_gib']:.2f} GiB")
             for name in ("weights", "gradients", "optimizer", "activations", "total")]
    rows += [("tokens per step", f"{plan['tokens_per_step']:,}"),
             ("FLOPs per step", f"{plan['flops_per_step']:.3e}")]
    return "\n".join(["| per device | estimate |", "| --- | ---: |"]
                     + [f"| {k} | {v} |" for k, v in rows]) + "\n"


# Training stages of the workflow: where their settings live and how their model is sized.
# Training stages: their config section and the launch layout they use.
STAGES = {"pretrain": (("pretrain",), "pretrain"), "grow": (("grow", "train"), "grow"),
          "baseline": (None, "grow"), "sft": (("sft", "train"), "sft"),
          "anneal": (("midtrain", "train"), "anneal"), "dpo": (("dpo", "train"), "dpo"),
          "rlvr": (("rlvr", "train"), "rlvr")}
GROWN_STAGES = ("grow", "baseline", "sft", "dpo", "rlvr")
GROWN_LAYOUT = ("micro_batch_size", "zero_stage", "compile", "peak_flops")
H100_BF16_FLOPS = 989e12


def merge_config(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base` key by key, as Snakemake merges --configfile."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merge_config(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out


def stage_model_config(config: dict, grown: bool) -> ModelConfig:
    """The model a workflow stage trains: config["model"], or its size after `grow`."""
    model, grow = config["model"], config["grow"]
    layers = grow["factor"] if grown and grow["operator"] == "depth" else 1
    width = grow["factor"] if grown and grow["operator"] == "width" else 1
    return ModelConfig(**{**model, "n_layers": model["n_layers"] * layers,
                          "d_model": model["d_model"] * width,
                          "n_heads": model["n_heads"] * width,
                          "mlp_hidden": model["mlp_hidden"] * width,
                          "vocab_size": config["tokenizer"]["vocab_size"]})


def _world_size(config: dict, stage: str) -> int:
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
    from lmforge.train.optim import resolve_batch

    world = _world_size(config, stage)
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


def workflow_plan(config: dict, mfu: float = 0.4) -> list[dict]:
    """Per training stage: processes, batch, tokens, FLOPs, memory per device and the time it
    takes at `mfu` of the devices' peak (H100/H200 bf16 for GPU jobs unless peak_flops)."""
    from lmforge.train.optim import resolve_batch

    rows = []
    for stage, (_, layout) in STAGES.items():
        launch = config["launch"][layout]
        world = _world_size(config, stage)
        cfg = resolve_batch(stage_train_config(config, stage), world)
        plan = estimate(stage_model_config(config, stage in GROWN_STAGES), cfg, world)
        peak = cfg.peak_flops or (H100_BF16_FLOPS if launch["gpus_per_node"] else None)
        flops = plan["flops_per_step"] * cfg.steps
        hours = flops / (world * peak * mfu) / 3600 if peak else None
        rows.append({"stage": stage, "nodes": launch["nodes"], "processes": world,
                     "gpus": launch["nodes"] * launch["gpus_per_node"], "steps": cfg.steps,
                     "gpu_memory_gib": launch.get("gpu_memory_gib", 80)
                     if launch["gpus_per_node"] else None,
                     "grad_accum": cfg.grad_accum,
                     "tokens": plan["tokens_per_step"] * cfg.steps, "flops": flops,
                     "hours": hours,
                     "gpu_hours": hours * launch["nodes"] * launch["gpus_per_node"]
                     if hours else None, **plan})
    return rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def workflow_markdown(rows: list[dict], mfu: float) -> str:
    def number(value, fmt):
        return "–" if value is None else format(value, fmt)

    lines = ["| stage | params | nodes × procs | GPUs | steps | accum | tokens | FLOPs | "
             f"hours at {mfu:.0%} MFU | GPU-hours | GiB per device |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {_count(r['parameters'])} | {r['nodes']} × "
            f"{r['processes'] // r['nodes']} | {r['gpus']} | {r['steps']:,} | {r['grad_accum']} "
            f"| {r['tokens']:.3e} | {r['flops']:.3e} | {number(r['hours'], ',.1f')} | "
            f"{number(r['gpu_hours'], ',.0f')} | {r['total_gib']:.1f} |")
    return "\n".join(lines) + "\n"


def staged_plan(config: dict, target_loss: float) -> str:
    """The staged-training schedule the scaling law gives for the config's pretrain → grow
    sizes (Kaplan's non-embedding parameters, the pretraining batch), as markdown."""
    from lmforge.model.hf import build
    from lmforge.train.grow import stage_schedule

    sizes = []
    for grown in (False, True):
        with torch.device("meta"):
            model = build(stage_model_config(config, grown))
        sizes.append(sum(p.numel() for p in model.model.layers.parameters()))
    pretrain = config["pretrain"]
    batch = pretrain.get("global_batch_size") or pretrain["micro_batch_size"] * pretrain[
        "grad_accum"]
    schedule = stage_schedule(sizes, batch * config["model"]["max_seq_len"], target_loss)
    lines = [f"Staged training to loss {target_loss} (Kaplan et al. L(N, S), batch "
             f"{batch} × {config['model']['max_seq_len']} tokens):", "",
             "| stage | non-embedding params | from step | to step | loss there | FLOPs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for index, stage in enumerate(schedule["stages"]):
        lines.append(f"| {index + 1} | {_count(int(stage['parameters']))} | "
                     f"{stage['start_step']:,.0f} | {stage['end_step']:,.0f} | "
                     f"{stage['loss']:.3f} | {stage['flops']:.3e} |")
    lines += ["", f"staged {schedule['staged_flops']:.3e} FLOPs vs {schedule['baseline_flops']:.3e}"
              f" for the last size from scratch: {schedule['saving']:.1%} saved"]
    if len(schedule["stages"]) < len(sizes):
        lines.append("the target is reached before growing pays off: the larger size is not "
                     "needed for this loss")
    return "\n".join(lines) + "\n"


@command("plan", arg("--preset", default=None), arg("--checkpoint", default=None),
         arg("--cfg", type=json_object, default=None), arg("--configfile", nargs="+", default=None),
         arg("--mfu", type=float, default=0.4), arg("--target-loss", type=float, default=None),
         arg("--world-size", type=int, default=1),
         arg("--device-memory-gib", type=float, default=None), tracked=False)
def plan_command(args, job) -> None:
    """Memory per device and FLOPs of a training run, or of every training stage of a workflow
    config (--configfile); error if it cannot fit."""
    from lmforge.model.hf import preset_config
    from lmforge.train.optim import resolve_batch

    if args.configfile:
        return _plan_workflow(args)
    if (args.preset is None) == (args.checkpoint is None) or args.cfg is None:
        raise ValueError("give --cfg and exactly one of --preset or --checkpoint, or "
                         "--configfile")
    if args.preset:
        model_cfg = preset_config(args.preset)
    else:
        from lmforge.model.checkpoint import load_model

        model_cfg = load_model(args.checkpoint).cfg
    plan = estimate(model_cfg, resolve_batch(args.cfg, args.world_size), args.world_size)
    print(markdown(plan), end="")
    memory = (args.device_memory_gib * GIB if args.device_memory_gib
              else device_memory_bytes("cuda" if torch.cuda.is_available() else "cpu"))
    check_fits(plan, int(memory))


def _plan_workflow(args) -> None:
    base = Path(__file__).resolve().parents[3] / "config" / "config.yaml"
    config = merged_config(args.configfile, base)
    rows = workflow_plan(config, args.mfu)
    print(workflow_markdown(rows, args.mfu), end="")
    if args.target_loss:
        print("\n" + staged_plan(config, args.target_loss), end="")
    for row in rows:
        memory = args.device_memory_gib or row["gpu_memory_gib"]
        if memory is None:  # a CPU job: the trainer checks the machine it runs on
            continue
        try:
            check_fits(row, int(memory * GIB))
        except InputError as err:
            raise InputError(f"{row['stage']}: {err}") from None
        print(f"{row['stage']}: fits a {memory:g} GiB GPU")

"""Growth operators on the whole training state, for staged training (Shen et al. 2022,
arXiv 2203.06211): model weights, AdamW moments and per-tensor learning-rate scales.

Width (×k): hidden size, heads and MLP width grow k-fold; every activation of the small model
appears k times side by side (heads keep their size, so there are k× as many). A matrix reading
a duplicated activation holds k×k tiles of W/k, a matrix reading one and writing one that is
not duplicated (the output head, the MoE router) k tiles of W/k, embeddings and norm weights
are repeated. RMSNorm of a k-fold repeated vector equals the repeated RMSNorm (the mean square
is the same), and so does OLMo 2's full-width QK-norm: the grown model computes the same
function (loss-preserving).

Symmetry breaking: exact tiles never separate. Each copy of an activation gets the same gradient,
AdamW's update is elementwise, and OLMo 2 has no dropout, so after any number of steps the copies
stay bit-identical and the wide model is the small one at k² the FLOPs. Every matrix reading a
duplicated activation therefore gets noise whose k input-copy column blocks sum to zero (drawn
independently per output row, std `noise` × std(W)/k, from a generator seeded by `seed`). The
copies it reads are identical, so the noise cancels: the function and the loss stay the small
model's up to float rounding, but the copies' gradients now differ and they diverge from the
first step. With noise = 0 the first optimizer step is exactly the grown image of the small one.

Training dynamics: by symmetry each copy of a duplicated activation gets 1/k of its gradient,
so a tensor whose output is duplicated has gradients scaled by α = 1/k (the head and the router:
α = 1). Its AdamW moments are mapped as m·α and v·α² (the paper's m/2, v/4 for k = 2), which
keeps Adam's normalised step per element. A tensor stored at scale c (1/k for the tiled W/k)
then needs the learning rate ×c and the weight decay ×1/c for its change to stay the mapped
change of the small model (μP's 1/fan-in rule for Adam), so one optimizer step on the grown
model equals the grown image of one step on the small model (without the symmetry-breaking
noise). Gradient clipping is the one part not preserved (the embedding's share of the global
norm changes).

Depth (×k): each layer is followed by k−1 copies of itself that are the identity at first. In
an OLMo 2 block the norms sit on the residual branches (`h = x + norm(attn(x))`), so zeroing a
copy's two output norms does it; in an OLMoE block (pre-norm) zeroing its attention output
projection and its experts' down projections does. The copies take their source layer's
moments (the zeroed tensors keep only its second moment, so their first steps have the source's
scale). New layers start learning at once, so depth growth preserves the loss but changes the
first step's function change by the new layers' updates.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmforge.data.tokenize import token_files
from lmforge.io.storage import InputError, read_json
from lmforge.model.hf import build
from lmforge.model.olmo2 import Olmo2, causal_lm_loss
from lmforge.model.olmoe import Olmoe
from lmforge.runner import CHECKPOINT, METRICS, OUT, SEED, TOKENS_DIR, arg, command
from lmforge.train.job import TRAIN_CFG, heldout, token_batches, train_job

Moments = dict[str, dict[str, torch.Tensor]]  # parameter name → {"exp_avg", "exp_avg_sq"}


@dataclass
class TrainingState:
    """What a growth operator maps: the model, AdamW's moments by parameter name, the
    optimizer step they were accumulated over, and learning-rate scales per parameter (weight
    decay takes the inverse)."""

    model: Olmo2 | Olmoe
    moments: Moments = field(default_factory=dict)
    step: int = 0
    lr_scale: dict[str, float] = field(default_factory=dict)


def _width_kind(name: str) -> str:
    """How a parameter maps under width growth (see the module docstring)."""
    if name.endswith("norm.weight") or name == "model.embed_tokens.weight":
        return "repeat"  # output duplicated, not read from a duplicated input
    if name == "lm_head.weight" or name.endswith("mlp.gate.weight"):
        return "read"  # reads a duplicated input, writes a non-duplicated output
    return "tile"  # reads and writes duplicated activations


def _widen(tensor: torch.Tensor, kind: str, k: int, scale: float) -> torch.Tensor:
    """Matrices may be stacked (the experts): the last two dimensions are the matrix."""
    if tensor.dim() == 1:
        return tensor.repeat(k) * scale
    stacked = (1,) * (tensor.dim() - 2)
    if kind in ("repeat", "read"):
        return tensor.repeat(*stacked, 1, k) * scale
    return tensor.repeat(*stacked, k, k) * scale


def _zero_sum_noise(rows: int, cols: int, k: int, std: float,
                    generator: torch.Generator) -> torch.Tensor:
    """rows × k·cols noise whose k column blocks sum to zero in every row, each entry of
    standard deviation `std` (centring k draws shrinks it by √((k−1)/k); that is undone)."""
    draw = torch.randn(rows, k, cols, generator=generator)
    noise = (draw - draw.mean(1, keepdim=True)) * (k / (k - 1)) ** 0.5 * std
    return noise.reshape(rows, k * cols)


# noise 0.5: the loss at growth changes by float rounding only, whatever the noise (< 1e-7). On
# tiny models (d_model 16→32, 32→64) 0.1 keeps the copies close for hundreds of steps (held-out
# loss 0.02–0.05 below the small model's 300 steps on, tests/test_grow.py), 0.5 separates them
# (0.21–0.28 below) while its first steps track the exact copies'; with 1.0 the first steps
# fall behind theirs (32→64) and with 2.0 they raise the loss.
def grow_width(state: TrainingState, k: int, noise: float = 0.5, seed: int = 0) -> TrainingState:
    if k < 2:
        raise ValueError(f"growth factor must be at least 2, got {k}")
    if noise < 0:
        raise ValueError(f"width noise must be at least 0, got {noise}")
    generator = torch.Generator().manual_seed(seed)
    cfg = state.model.cfg
    wide_cfg = type(cfg)(**{**cfg.to_dict(), "d_model": cfg.d_model * k,
                            "n_heads": cfg.n_heads * k, "mlp_hidden": cfg.mlp_hidden * k})
    grown = build(wide_cfg)
    weights, moments, lr_scale = {}, {}, {}
    for name, param in state.model.state_dict().items():
        kind = _width_kind(name)
        stored = 1.0 if kind == "repeat" else 1.0 / k  # c: the scale the grown tensor holds
        gradient = 1.0 if kind == "read" else 1.0 / k  # α: the scale of its gradients
        weights[name] = _widen(param, kind, k, stored)
        if kind != "repeat" and noise:  # it reads a duplicated input: break the symmetry
            std = noise * param.float().std().item() / k
            grown_weight = weights[name]
            rows = grown_weight.numel() // grown_weight.shape[-1]
            grown_weight += _zero_sum_noise(rows, param.shape[-1], k, std, generator).to(
                grown_weight).view_as(grown_weight)
        lr_scale[name] = state.lr_scale.get(name, 1.0) * stored
        if name in state.moments:
            moments[name] = {
                "exp_avg": _widen(state.moments[name]["exp_avg"], kind, k, gradient),
                "exp_avg_sq": _widen(state.moments[name]["exp_avg_sq"], kind, k,
                                     gradient**2)}
    grown.load_state_dict(weights)
    return TrainingState(grown, moments, state.step, lr_scale)


def _identity_tensors(block: nn.Module) -> list[nn.Parameter]:
    """The parameters whose zeroing makes a block the identity."""
    if hasattr(block, "post_feedforward_layernorm"):  # OLMo 2: norms on the residual branches
        return [block.post_attention_layernorm.weight, block.post_feedforward_layernorm.weight]
    return [block.self_attn.o_proj.weight, block.mlp.experts.down_proj]


def grow_depth(state: TrainingState, k: int) -> TrainingState:
    if k < 2:
        raise ValueError(f"growth factor must be at least 2, got {k}")
    cfg = state.model.cfg
    grown = build(type(cfg)(**{**cfg.to_dict(), "n_layers": cfg.n_layers * k}))
    layers, moments, lr_scale = [], {}, {}
    for index, layer in enumerate(state.model.model.layers):
        for copy_index in range(k):
            twin = copy.deepcopy(layer)
            zeroed = set()
            if copy_index:
                with torch.no_grad():
                    for param in _identity_tensors(twin):
                        param.zero_()
                        zeroed.add(id(param))
            new_index = index * k + copy_index
            for local, param in twin.named_parameters():
                old, new = f"model.layers.{index}.{local}", f"model.layers.{new_index}.{local}"
                lr_scale[new] = state.lr_scale.get(old, 1.0)
                if old in state.moments:
                    source = state.moments[old]
                    moments[new] = {
                        "exp_avg": torch.zeros_like(source["exp_avg"]) if id(param) in zeroed
                        else source["exp_avg"].clone(),
                        "exp_avg_sq": source["exp_avg_sq"].clone()}
            layers.append(twin)
    grown.model.layers = nn.ModuleList(layers)
    for name, module in (("model.embed_tokens", grown.model.embed_tokens),
                         ("model.norm", grown.model.norm), ("lm_head", grown.lm_head)):
        source = state.model.get_submodule(name)
        module.load_state_dict(source.state_dict())
        key = f"{name}.weight"
        lr_scale[key] = state.lr_scale.get(key, 1.0)
        if key in state.moments:
            moments[key] = {m: t.clone() for m, t in state.moments[key].items()}
    return TrainingState(grown, moments, state.step, lr_scale)


OPERATORS = {"depth": grow_depth, "width": grow_width}


def optimizer_moments(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Moments, int]:
    """A torch AdamW's moments by parameter name, and its step."""
    moments, step = {}, 0
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if state:
            moments[name] = {"exp_avg": state["exp_avg"].detach().clone(),
                             "exp_avg_sq": state["exp_avg_sq"].detach().clone()}
            step = int(state["step"])
    return moments, step


def scaled_param_groups(model: nn.Module, lr: float, weight_decay: float,
                        lr_scale: dict[str, float], no_decay: set[str]) -> list[dict]:
    """One AdamW group per distinct scale: lr × scale, weight decay ÷ scale (so their product,
    the decoupled decay per step, stays the small model's)."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        scale = lr_scale.get(name, 1.0)
        decays = name not in no_decay
        group = groups.setdefault((scale, decays), {
            "params": [], "names": [], "lr": lr * scale,
            "weight_decay": weight_decay / scale if decays else 0.0})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def load_moments(model: nn.Module, optimizer: torch.optim.Optimizer, moments: Moments,
                 step: int) -> None:
    """Put mapped moments into a torch AdamW before its first step."""
    for name, param in model.named_parameters():
        if name in moments:
            optimizer.state[param] = {
                "step": torch.tensor(float(step)),
                "exp_avg": moments[name]["exp_avg"].clone(),
                "exp_avg_sq": moments[name]["exp_avg_sq"].clone()}


# Kaplan et al. 2020, L(N, S_min) (eq. 5.6 and table 5): loss in nats against non-embedding
# parameters N and optimizer steps S at the critical batch size.
KAPLAN = {"alpha_n": 0.076, "n_c": 8.8e13, "alpha_s": 0.76, "s_c": 2.1e3}


def kaplan_loss(n_params: float, steps: float, law: dict = KAPLAN) -> float:
    return (law["n_c"] / n_params) ** law["alpha_n"] + (law["s_c"] / steps) ** law["alpha_s"]


def _steps_to(loss: float, n_params: float, law: dict) -> float:
    """Steps at which a model of n_params reaches `loss` (inf if it never does)."""
    excess = loss - (law["n_c"] / n_params) ** law["alpha_n"]
    return law["s_c"] * excess ** (-1 / law["alpha_s"]) if excess > 0 else float("inf")


def _efficiency(loss: float, n_params: float, batch_tokens: float, law: dict) -> float:
    """−dL/dC at `loss`: loss decrease per training FLOP (C = 6·N·B·S)."""
    steps = _steps_to(loss, n_params, law)
    slope = law["alpha_s"] * law["s_c"] ** law["alpha_s"] * steps ** (-law["alpha_s"] - 1)
    return slope / (6 * n_params * batch_tokens)


def stage_schedule(n_params: list[float], batch_tokens: float, target_loss: float,
                   law: dict = KAPLAN) -> dict:
    """The paper's compute-optimal staged schedule: train each stage until its loss decrease
    per FLOP falls to that of the next (grown, loss- and dynamics-preserving) size at the same
    loss, continue from the equivalent step of the larger model, and train the last size to
    `target_loss`. Returns the stages and the compute against the last size from scratch."""
    floor = (law["n_c"] / n_params[-1]) ** law["alpha_n"]
    if target_loss <= floor:
        raise ValueError(f"target loss {target_loss} is below what {n_params[-1]:.3g} "
                         f"parameters reach ({floor:.4f})")
    stages, loss = [], None
    for index, n in enumerate(n_params):
        start = 0.0 if loss is None else _steps_to(loss, n, law)
        if index + 1 < len(n_params):
            bigger = n_params[index + 1]
            low = max((law["n_c"] / n) ** law["alpha_n"], target_loss) * (1 + 1e-9)
            high = kaplan_loss(n, max(start, 1.0), law)
            gap = lambda x: (_efficiency(x, n, batch_tokens, law)  # noqa: E731
                             - _efficiency(x, bigger, batch_tokens, law))
            if gap(high) <= 0:  # the larger size is already more efficient: skip this one
                continue
            if gap(low) > 0:  # this size stays more efficient all the way to the target
                switch = target_loss
            else:
                for _ in range(200):  # bisection: below the crossing the larger size wins
                    middle = (low + high) / 2
                    low, high = (middle, high) if gap(middle) <= 0 else (low, middle)
                switch = (low + high) / 2
        else:
            switch = target_loss
        end = _steps_to(switch, n, law)
        stages.append({"parameters": n, "start_step": start, "end_step": end,
                       "steps": end - start, "loss": switch,
                       "flops": 6 * n * batch_tokens * (end - start)})
        loss = switch
        if switch <= target_loss:
            break
    baseline = 6 * n_params[-1] * batch_tokens * _steps_to(target_loss, n_params[-1], law)
    staged = sum(stage["flops"] for stage in stages)
    return {"stages": stages, "staged_flops": staged, "baseline_flops": baseline,
            "saving": 1 - staged / baseline}


@command("grow", CHECKPOINT, TOKENS_DIR, TRAIN_CFG, SEED, OUT, METRICS,
         arg("--operator", choices=sorted(OPERATORS)), arg("--factor", type=int),
         arg("--width-noise", type=float),
         params=lambda args: {**args.cfg.to_dict(), "operator": args.operator,
                              "factor": args.factor, "from": args.checkpoint, "seed": args.seed},
         inputs=("checkpoint", "token_files"), outputs=("out", "metrics"))
def grow_command(args, job) -> dict:
    """Grow a trained model with its optimizer state (depth or width) and continue training
    on the data order where the small model stopped."""
    from lmforge.model.checkpoint import load_model, load_moments

    small = load_model(args.checkpoint)
    moments, step = load_moments(args.checkpoint)
    width = {"noise": args.width_noise, "seed": args.seed} if args.operator == "width" else {}
    state = OPERATORS[args.operator](TrainingState(small, moments, step), args.factor, **width)
    grown = state.model
    small_state = read_json(Path(args.checkpoint) / "trainer_state.json")
    if "next_instance" not in small_state:
        raise InputError(f"{args.checkpoint} does not record where its data order stopped; "
                         "train it again with this version of lmforge")
    first_instance = small_state["next_instance"]
    args.token_files = token_files(args.tokens_dir)
    batches = token_batches(args.tokens_dir, grown, args.cfg, small_state["seed"],
                            first_instance)
    probe_inputs, probe_labels = batches(0, 0)
    with torch.no_grad():
        loss_before = causal_lm_loss(small(probe_inputs), probe_labels).item()
        loss_after = causal_lm_loss(grown(probe_inputs), probe_labels).item()
    logging.getLogger(__name__).info("growth %s x%d: loss %.6f -> %.6f", args.operator,
                                     args.factor, loss_before, loss_after)
    # Both operators preserve the function (the width noise cancels over the identical copies
    # it reads), so only float rounding may change the loss: 1e-4 of it (absolute below 1).
    if abs(loss_before - loss_after) > 1e-4 * max(1.0, abs(loss_before)):
        raise RuntimeError(f"growth changed the loss: {loss_before:.6f} -> {loss_after:.6f}")
    return train_job(job, grown, batches, args,
                     {"grow.loss_before": loss_before, "grow.loss_after": loss_after},
                     start=state, heldout=heldout(args.tokens_dir, grown, args.cfg),
                     first_instance=first_instance)

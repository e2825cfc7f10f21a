import json
import os

import numpy as np
import pytest
import torch

from lmforge.model.checkpoint import load_model
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.train.data import instance_batches
from lmforge.train.loop import train
from lmforge.train.optim import lr_lambda, param_groups

from conftest import train_config

TRAIN = {"steps": 12, "micro_batch_size": 4, "grad_accum": 2, "lr": 1e-2, "min_lr_ratio": 0.1,
         "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 1.0, "zero_stage": 1,
         "precision": "fp32", "log_every": 3}


def test_lr_schedule_warms_up_then_decays_to_floor():
    values = [lr_lambda(s, TRAIN) for s in range(TRAIN["steps"] + 1)]
    assert values[0] == 0.5 and values[1] == 1.0
    assert all(a >= b for a, b in zip(values[1:], values[2:]))
    assert values[-1] == pytest.approx(TRAIN["min_lr_ratio"])


def test_linear_schedule_and_weight_decay_groups():
    linear = {**TRAIN, "schedule": "linear", "min_lr_ratio": 0.0}
    values = [lr_lambda(s, linear) for s in range(2, TRAIN["steps"] + 1)]
    steps = [a - b for a, b in zip(values, values[1:])]
    assert values[-1] == 0.0 and max(steps) - min(steps) < 1e-9  # a straight line to zero
    model = Olmo2(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64))
    decayed = lambda groups: sum(p.numel() for p in groups[0]["params"])  # noqa: E731
    embedding = model.model.embed_tokens.weight.numel()
    assert decayed(param_groups(model, 0.1, True)) - decayed(param_groups(model, 0.1)) == embedding
    norms = sum(p.numel() for p in model.parameters() if p.ndim < 2)
    assert decayed(param_groups(model, 0.1)) - decayed(param_groups(model, 0.1, decay_norms=False)
                                                        ) == norms > 0
    assert all(p.ndim == 2 for p in param_groups(model, 0.1, decay_norms=False)[0]["params"])


def test_instance_batches_follow_a_seeded_permutation():
    tokens = np.arange(10 * 8, dtype=np.uint16)
    batches = instance_batches(tokens, 8, {**TRAIN, "grad_accum": 1, "micro_batch_size": 5}, 3)
    first = [int(x[0, 0]) // 8 for x in (batches(0, 0)[0][i : i + 1] for i in range(5))]
    second = [int(batches(1, 0)[0][i, 0]) // 8 for i in range(5)]
    assert sorted(first + second) == list(range(10))  # one epoch = every instance once
    inputs, labels = batches(0, 0)
    assert inputs.shape == (5, 7) and np.array_equal(inputs[:, 1:], labels[:, :-1])
    again = instance_batches(tokens, 8, {**TRAIN, "grad_accum": 1, "micro_batch_size": 5}, 3)
    assert np.array_equal(again(0, 0)[0], inputs)


def test_a_later_stage_continues_the_data_order_and_heldout_loss_is_a_fixed_set():
    from lmforge.model.olmo2 import causal_lm_loss
    from lmforge.train.data import heldout_loss_fn

    tokens = np.arange(10 * 8, dtype=np.uint16)
    cfg = {**TRAIN, "grad_accum": 1, "micro_batch_size": 3}
    whole = instance_batches(tokens, 8, cfg, 3)
    continued = instance_batches(tokens, 8, cfg, 3, first_instance=2 * 3)
    for step in range(5):  # across the epoch boundary too
        assert np.array_equal(continued(step, 0)[0], whole(step + 2, 0)[0])
    model = Olmo2(ModelConfig(vocab_size=80, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32,
                              max_seq_len=8))
    model.train()
    loss = heldout_loss_fn(tokens, 8, instances=4, batch_size=3)(model, "cpu")
    rows = torch.from_numpy(tokens[:32].astype(np.int64).reshape(4, 8))
    with torch.no_grad():
        expected = causal_lm_loss(model(rows[:, :-1]), rows[:, 1:]).item()
    assert loss == pytest.approx(expected, rel=1e-6) and model.training


def _run(tmp_path, name):
    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64,
                              max_seq_len=16))
    rng = np.random.default_rng(0)
    # A learnable stream: a repeating pattern with noise.
    tokens = (np.tile(np.arange(16), 200) + (rng.random(3200) < 0.05)).astype(np.uint16)
    batches = instance_batches(tokens, 16, TRAIN, seed=1)
    summary = train(model, batches, TRAIN, 1, tmp_path / name, tmp_path / f"{name}.csv")
    return summary, (tmp_path / f"{name}.csv").read_text()


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def one_rank_world():
    """train() describes a one-process world in os.environ; undo that after the test."""
    saved = {k: os.environ.pop(k) for k in DISTRIBUTED_ENV if k in os.environ}
    yield
    for name in DISTRIBUTED_ENV:
        os.environ.pop(name, None)
    os.environ.update(saved)


def test_deepspeed_training_learns_checkpoints_and_is_deterministic(tmp_path, one_rank_world):
    summary, metrics = _run(tmp_path, "a")
    losses = [float(line.split(",")[1]) for line in metrics.splitlines()[1:]]
    assert losses[-1] < losses[0] - 0.5
    assert summary["tokens_seen"] == TRAIN["steps"] * 2 * 4 * 15
    ckpt = tmp_path / "a"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "deepspeed" / "latest").exists()
    load_model(ckpt)
    _, metrics_again = _run(tmp_path, "b")
    losses_again = [float(line.split(",")[1]) for line in metrics_again.splitlines()[1:]]
    assert losses_again == losses  # same seed, same data order: identical losses on CPU


def test_olmoe_trains_through_the_engine_with_its_auxiliary_losses(tmp_path, one_rank_world):
    """And under ZeRO-3, which gathers the stacked experts when their module runs, to the same
    losses and a checkpoint of the whole model."""
    import csv

    from lmforge.model.olmoe import MoEConfig, Olmoe

    rng = np.random.default_rng(0)
    tokens = (np.tile(np.arange(16), 200) + (rng.random(3200) < 0.05)).astype(np.uint16)
    losses = {}
    for stage in (1, 3):
        torch.manual_seed(0)
        model = Olmoe(MoEConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden=32,
                                max_seq_len=16, n_experts=4, top_k=2))
        cfg = {**TRAIN, "z_loss": 1e-4, "peak_flops": 1e11, "zero_stage": stage}
        train(model, instance_batches(tokens, 16, cfg, seed=1), cfg, 1, tmp_path / f"moe{stage}",
              tmp_path / f"moe{stage}.csv")
        rows = list(csv.DictReader(open(tmp_path / f"moe{stage}.csv")))
        assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.5
        for row in rows:
            assert float(row["load_balancing"]) > 0 and float(row["router_z"]) > 0
            assert float(row["z_loss"]) > 0 and float(row["grad_norm"]) > 0
            assert 0 < float(row["mfu"]) < 1
        losses[stage] = [float(row["loss"]) for row in rows]
        trained = load_model(tmp_path / f"moe{stage}")
        assert isinstance(trained, Olmoe)
        assert trained.model.layers[0].mlp.experts.gate_proj.shape == (4, 32, 32)
    assert np.allclose(losses[3], losses[1], rtol=1e-5)


# The subprocess scripts' shared start: the tiny model and the learnable token stream of _run.
TINY_SETUP = """
import os, sys, time
import numpy as np, torch
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.train.data import instance_batches
from lmforge.train.loop import train
torch.manual_seed(0)
model = Olmo2(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64,
                          max_seq_len=16))
rng = np.random.default_rng(0)
tokens = (np.tile(np.arange(16), 200) + (rng.random(3200) < 0.05)).astype(np.uint16)
"""

RESUMABLE = TINY_SETUP + """
cfg = {"steps": 16, "micro_batch_size": 4, "grad_accum": 2, "lr": 1e-2, "min_lr_ratio": 0.1,
       "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 1.0, "zero_stage": 1,
       "precision": "fp32", "log_every": 3, "checkpoint_every": 4, "keep_last": 2}
inner = instance_batches(tokens, 16, cfg, seed=1)
def batches(step, micro_step):  # slowed down so that the test can kill the run mid-way
    time.sleep(float(sys.argv[3]))
    return inner(step, micro_step)
train(model, batches, cfg, 1, sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_losses_and_weights(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from lmforge.train.checkpointing import step_checkpoints

    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}

    def run(name: str, delay: float, wait: bool = True):
        cmd = [sys.executable, "-c", RESUMABLE, str(tmp_path / name),
               str(tmp_path / f"{name}.csv"), str(delay)]
        if wait:
            return subprocess.run(cmd, env=env, check=True, capture_output=True)
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    run("straight", 0)
    killed = run("resumed", 0.1, wait=False)
    deadline = time.monotonic() + 300
    while not any(p.name >= "step-000008" for p in step_checkpoints(tmp_path / "resumed")):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "resumed").exists()  # no final checkpoint from the killed run
    assert len(step_checkpoints(tmp_path / "resumed")) <= 2  # keep_last
    run("resumed", 0)
    state = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert state["resumed_from_step"] >= 8
    straight, resumed = ((tmp_path / f"{n}.csv").read_text().splitlines() for n in
                         ("straight", "resumed"))
    column = straight[0].split(",").index("loss")
    assert [r.split(",")[column] for r in straight] == [r.split(",")[column] for r in resumed]
    assert (tmp_path / "straight" / "model.safetensors").read_bytes() == \
        (tmp_path / "resumed" / "model.safetensors").read_bytes()
    assert not step_checkpoints(tmp_path / "resumed")  # cleaned up once the run completes


RANKED = TINY_SETUP + """
world = int(os.environ.get("WORLD_SIZE", 1))
crash_at_step = int(os.environ.get("CRASH_AT_STEP", -1))  # a hard exit, like a lost node
cfg = {"steps": 10, "micro_batch_size": 4 // world, "grad_accum": 2, "lr": 1e-2,
       "min_lr_ratio": 0.1, "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 1.0,
       "zero_stage": int(os.environ.get("ZERO_STAGE", 1)), "precision": "fp32", "log_every": 2,
       "checkpoint_every": 4}
inner = instance_batches(tokens, 16, cfg, seed=1, rank=int(os.environ.get("RANK", 0)),
                         world_size=world)
def batches(step, micro_step):
    if step == crash_at_step:
        os._exit(3)
    return inner(step, micro_step)
train(model, batches, cfg, 1, sys.argv[1], sys.argv[2])
"""


def _ranked(tmp_path, name: str, processes: int, crash_at_step: int = -1, zero_stage: int = 1):
    import socket
    import subprocess
    import sys

    script = tmp_path / "ranked.py"
    script.write_text(RANKED)
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(CRASH_AT_STEP=str(crash_at_step), ZERO_STAGE=str(zero_stage))
    args = [str(script), str(tmp_path / name), str(tmp_path / f"{name}.csv")]
    if processes > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 3])
def test_two_processes_match_one_and_a_checkpoint_of_two_resumes_in_one(tmp_path, zero_stage):
    """ZeRO-1 shards the optimizer state over the ranks, ZeRO-3 also the weights: either way
    the final checkpoint is the whole model, and a step checkpoint of two ranks resumes in one."""
    import csv

    from lmforge.train.checkpointing import step_checkpoints

    assert _ranked(tmp_path, "one", 1, zero_stage=zero_stage).returncode == 0
    assert _ranked(tmp_path, "two", 2, zero_stage=zero_stage).returncode == 0
    one, two = (list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("one", "two"))
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]  # the same global batches
    for a, b in zip(one, two):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))  # the shared checkpoint directory was renamed
    weights = [load_model(tmp_path / n).state_dict() for n in ("one", "two")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-6, msg=name)

    # Two processes lose a node after step 4's checkpoint; one process (micro-batch doubled,
    # the same global batch) resumes from it through DeepSpeed's universal checkpoint (under
    # ZeRO-3 from its per-parameter files, see lmforge.train.loop).
    assert _ranked(tmp_path, "moved", 2, crash_at_step=6, zero_stage=zero_stage).returncode != 0
    [checkpoint] = step_checkpoints(tmp_path / "moved")
    assert _ranked(tmp_path, "moved", 1, zero_stage=zero_stage).returncode == 0
    moved = list(csv.DictReader(open(tmp_path / "moved.csv")))
    assert [r["tokens"] for r in moved] == [r["tokens"] for r in two]
    for a, b in zip(two, moved):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    state = json.loads((tmp_path / "moved" / "trainer_state.json").read_text())
    assert state["resumed_from_step"] == 4 and state["world_size"] == 1
    moved_weights = load_model(tmp_path / "moved").state_dict()
    for name, tensor in weights[1].items():
        torch.testing.assert_close(moved_weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_without_zero_a_checkpoint_of_two_processes_loads_in_one(tmp_path):
    """ZeRO-0 keeps the whole optimizer state on every rank: no universal conversion needed."""
    import csv

    assert _ranked(tmp_path, "two", 2, zero_stage=0).returncode == 0
    assert _ranked(tmp_path, "moved", 2, crash_at_step=6, zero_stage=0).returncode != 0
    assert _ranked(tmp_path, "moved", 1, zero_stage=0).returncode == 0
    two, moved = (list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("two", "moved"))
    for a, b in zip(two, moved, strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert json.loads((tmp_path / "moved" / "trainer_state.json").read_text())[
        "resumed_from_step"] == 4


def test_resuming_refuses_another_config_or_global_batch(tmp_path):
    from lmforge.io.storage import write_json
    from lmforge.train.checkpointing import resume_point
    from lmforge.train.config import TrainConfig

    cfg = TrainConfig(steps=10, micro_batch_size=2, grad_accum=2, lr=1e-2, min_lr_ratio=0.1,
                      warmup_steps=0, weight_decay=0.0, grad_clip=1.0, zero_stage=1,
                      precision="fp32", log_every=1, checkpoint_every=4)
    step = tmp_path / "run.steps" / "step-000004"
    step.mkdir(parents=True)
    write_json(step / "trainer_state.json", {"step": 4, "config": cfg.to_dict(), "world_size": 2})
    assert resume_point(tmp_path / "run", cfg.replace(micro_batch_size=4), 1)[0] == step
    assert resume_point(tmp_path / "run", cfg.replace(checkpoint_every=2), 2)[0] == step
    with pytest.raises(ValueError, match="global batch of 8"):
        resume_point(tmp_path / "run", cfg, 1)
    with pytest.raises(ValueError, match=r"\(lr differ\)"):
        resume_point(tmp_path / "run", cfg.replace(lr=1e-3), 2)


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_a_grown_training_state_steps_in_the_engine_as_in_torch(tmp_path, one_rank_world,
                                                                zero_stage):
    """Moments saved by a run, grown in width, injected into a new engine: its first step
    equals a torch AdamW's from the same grown state (lr scales and moments included)."""
    import copy

    from lmforge.model.checkpoint import load_moments
    from lmforge.model.olmo2 import causal_lm_loss
    from lmforge.train.grow import TrainingState, grow_width
    from lmforge.train.grow import load_moments as put_moments

    cfg = {**TRAIN, "steps": 3, "grad_accum": 1, "zero_stage": zero_stage, "warmup_steps": 0,
           "grad_clip": 1e6, "log_every": 1, "save_moments": True}
    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=17, d_model=16, n_layers=2, n_heads=2, mlp_hidden=24,
                              max_seq_len=16))
    tokens = (np.arange(3200) * 7 % 17).astype(np.uint16)
    train(model, instance_batches(tokens, 16, cfg, seed=1), cfg, 1, tmp_path / "small",
          tmp_path / "small.csv")
    moments, step = load_moments(tmp_path / "small")
    assert step == 3 and set(moments) == {n for n, _ in model.named_parameters()}
    state = grow_width(TrainingState(load_model(tmp_path / "small"), moments, step), 2)

    one = {**cfg, "steps": 1, "save_moments": False}
    batch = instance_batches(tokens, 16, one, seed=5)(0, 0)
    reference = copy.deepcopy(state.model)
    optimizer = torch.optim.AdamW(param_groups(reference, one["weight_decay"], lr=one["lr"],
                                               lr_scale=state.lr_scale),
                                  lr=one["lr"], betas=(0.9, 0.95), eps=1e-8)
    put_moments(reference, optimizer, state.moments, state.step)
    causal_lm_loss(reference(batch[0]), batch[1]).backward()
    optimizer.step()
    train(state.model, lambda s, m: batch, one, 1, tmp_path / "grown", tmp_path / "grown.csv",
          start=state)
    grown = load_model(tmp_path / "grown")
    moved = max((a - b).abs().max().item() for a, b in
                zip(reference.parameters(), grow_width(TrainingState(
                    load_model(tmp_path / "small")), 2).model.parameters()))
    diff = max((a - b).abs().max().item() for a, b in
               zip(reference.parameters(), grown.parameters()))
    assert moved > 1e-4 and diff < 1e-6 * max(1.0, moved)


def test_sum_reduction_adds_the_labelled_tokens_losses():
    import torch.nn.functional as F

    from lmforge.train.loop import training_loss

    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32,
                              max_seq_len=16))

    class Engine:  # what training_loss needs of a DeepSpeed engine
        module = model

        def __call__(self, *args, **kwargs):
            return model(*args, **kwargs)

    inputs = torch.randint(0, 50, (2, 8))
    labels = torch.randint(0, 50, (2, 8))
    labels[0, :5] = -100
    mean, parts = training_loss(Engine(), inputs, labels, train_config())
    total, _ = training_loss(Engine(), inputs, labels, train_config(loss_reduction="sum"))
    by_hand = F.cross_entropy(model(inputs).view(-1, 50), labels.view(-1), ignore_index=-100,
                              reduction="sum")
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert mean.item() == pytest.approx(by_hand.item() / 11, rel=1e-5) == parts["loss"]


def test_a_continuing_stage_runs_the_earlier_schedule_on_after_a_re_warm_up():
    whole = {**TRAIN, "steps": 20, "warmup_steps": 4}
    first = {**whole, "steps": 12, "schedule_steps": 20}
    rest = {**whole, "steps": 8, "schedule_steps": 20, "schedule_offset": 12}
    assert [lr_lambda(s, first) for s in range(12)] == [lr_lambda(s, whole) for s in range(12)]
    assert [lr_lambda(s, rest) for s in range(8)] == [lr_lambda(s, whole) for s in range(12, 20)]
    rewarmed = [lr_lambda(s, {**rest, "rewarm_steps": 4}) for s in range(8)]
    assert rewarmed[0] == pytest.approx(lr_lambda(12, whole) / 4)
    assert rewarmed[4:] == [lr_lambda(s, whole) for s in range(16, 20)]


def _accumulated_bf16_gradients(grad_accum_dtype: str, micro_batches: list) -> dict:
    """DeepSpeed's gradient of a bf16 OLMo 2 (ZeRO-1) summed over the micro-batches, read
    before the optimizer step, and the bf16 weights it started from."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from lmforge.model.olmo2 import causal_lm_loss
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import _ensure_distributed_env
    from lmforge.train.optim import deepspeed_config

    _ensure_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32,
                              max_seq_len=16))
    cfg = TrainConfig(steps=1, micro_batch_size=1, grad_accum=len(micro_batches), lr=1e-3,
                      min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=1e9,
                      zero_stage=1, precision="bf16", log_every=1,
                      grad_accum_dtype=grad_accum_dtype)
    engine, *_ = deepspeed.initialize(model=model, config=deepspeed_config(cfg, 1),
                                      optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    start = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    for index, (inputs, labels) in enumerate(micro_batches):
        engine.backward(causal_lm_loss(engine(inputs), labels))
        if index + 1 < len(micro_batches):
            engine.step()
    grads = {n: safe_get_full_grad(p).double() for n, p in engine.module.named_parameters()}
    engine.step()
    return {"grads": grads, "start": start}


def test_bf16_gradients_accumulate_in_fp32_over_a_long_accumulation(one_rank_world):
    """256 micro-batches under bf16: fp32 accumulation (the default, as OLMo) gives the exact
    sum of the bf16 micro-batch gradients to fp32 rounding; bf16 accumulation loses much of it."""
    from lmforge.model.olmo2 import causal_lm_loss

    generator = torch.Generator().manual_seed(1)
    micro = [(torch.randint(0, 32, (1, 16), generator=generator),
              torch.randint(0, 32, (1, 16), generator=generator)) for _ in range(256)]
    fp32 = _accumulated_bf16_gradients("fp32", micro)
    bf16 = _accumulated_bf16_gradients("bf16", micro)
    # The reference: each micro-batch's bf16 gradient (DeepSpeed scales the loss by 1/256),
    # summed in float64.
    reference = Olmo2(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2,
                                  mlp_hidden=32, max_seq_len=16)).bfloat16()
    reference.load_state_dict(fp32["start"])
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in reference.named_parameters()}
    for inputs, labels in micro:
        reference.zero_grad()
        (causal_lm_loss(reference(inputs), labels) / len(micro)).backward()
        for name, param in reference.named_parameters():
            total[name] += param.grad.double()

    def error(grads: dict) -> float:
        return max(((grads[n] - t).norm() / t.norm()).item() for n, t in total.items())

    assert error(fp32["grads"]) < 1e-3
    assert error(bf16["grads"]) > 10 * error(fp32["grads"])


def test_the_chunked_head_is_refused_where_a_stage_needs_the_logits(tmp_path, one_rank_world):
    model = Olmo2(ModelConfig(vocab_size=17, d_model=16, n_layers=1, n_heads=2, mlp_hidden=24,
                              max_seq_len=16))
    with pytest.raises(ValueError, match="needs the logits themselves"):
        train(model, lambda step, micro_step: None, {**TRAIN, "loss_chunk_tokens": 8}, 1,
              tmp_path / "never", tmp_path / "never.csv", objective=lambda e, b, c: None)
    assert not (tmp_path / "never").exists()

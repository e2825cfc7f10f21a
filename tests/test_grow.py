"""Growth operators on the training state: loss preservation and training-dynamics preservation,
for OLMo 2 (post-norm, QK-norm) and OLMoE (experts)."""

from pathlib import Path

import pytest
import torch

from lmforge.grow import (
    OPERATORS,
    TrainingState,
    grow_depth,
    grow_width,
    load_moments,
    optimizer_moments,
    scaled_param_groups,
)
from lmforge.model import ModelConfig, Olmo2, causal_lm_loss
from lmforge.olmoe import MoEConfig, Olmoe
from lmforge.storage import InputError

ROOT = Path(__file__).resolve().parents[1]

LR, WEIGHT_DECAY = 3e-3, 0.1
NO_DECAY = {"model.embed_tokens.weight"}


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "dense":
        return Olmo2(ModelConfig(vocab_size=97, d_model=16, n_layers=2, n_heads=2, mlp_hidden=24,
                                 max_seq_len=16))
    return Olmoe(MoEConfig(vocab_size=97, d_model=16, n_layers=2, n_heads=2, mlp_hidden=8,
                           max_seq_len=16, n_experts=4, top_k=2))


def _batch(seed: int):
    ids = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def _loss(model, batch) -> torch.Tensor:
    return causal_lm_loss(model(batch[0]), batch[1])


def _optimizer(model, lr_scale):
    return torch.optim.AdamW(scaled_param_groups(model, LR, WEIGHT_DECAY, lr_scale, NO_DECAY),
                             betas=(0.9, 0.95), eps=1e-8)


def _step(model, optimizer, batch) -> None:
    optimizer.zero_grad()
    _loss(model, batch).backward()
    optimizer.step()


def _trained(kind: str) -> tuple[TrainingState, torch.optim.Optimizer]:
    """A small model after a few AdamW steps, so its moments are not trivial."""
    model = _model(kind)
    optimizer = _optimizer(model, {})
    for seed in range(4):
        _step(model, optimizer, _batch(seed))
    moments, step = optimizer_moments(model, optimizer)
    return TrainingState(model, moments, step), optimizer


@pytest.mark.parametrize("kind", ["dense", "moe"])
@pytest.mark.parametrize("operator", ["width", "depth"])
def test_growth_preserves_the_loss(kind, operator):
    state, _ = _trained(kind)
    grown = OPERATORS[operator](state, 2)
    batch = _batch(99)
    with torch.no_grad():
        before, after = _loss(state.model, batch).item(), _loss(grown.model, batch).item()
    assert abs(after - before) / before < 1e-5
    small_cfg, big_cfg = state.model.cfg, grown.model.cfg
    if operator == "width":
        assert (big_cfg.d_model, big_cfg.n_heads, big_cfg.mlp_hidden) == (
            2 * small_cfg.d_model, 2 * small_cfg.n_heads, 2 * small_cfg.mlp_hidden)
    else:
        assert big_cfg.n_layers == 2 * small_cfg.n_layers
    assert set(grown.moments) == {n for n, _ in grown.model.named_parameters()}
    assert grown.step == state.step == 4


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_width_growth_preserves_the_first_optimizer_step(kind):
    """One step on the grown state equals the grown image of one step on the small one."""
    state, small_optimizer = _trained(kind)
    grown = grow_width(state, 2)
    grown_optimizer = _optimizer(grown.model, grown.lr_scale)
    load_moments(grown.model, grown_optimizer, grown.moments, grown.step)
    batch, probe = _batch(7), _batch(8)
    with torch.no_grad():
        start, logits_before = _loss(state.model, probe).item(), state.model(probe[0])
    _step(state.model, small_optimizer, batch)
    _step(grown.model, grown_optimizer, batch)
    image = grow_width(TrainingState(state.model), 2).model
    with torch.no_grad():
        small_after = _loss(state.model, probe).item()
        expected, got = image(probe[0]), grown.model(probe[0])
    assert abs(small_after - start) > 1e-4  # the step changed the function
    change = (expected - logits_before).abs().max()
    assert (got - expected).abs().max() < 1e-4 * change  # measured: 3e-6 dense, 1e-5 MoE

    # Without the learning-rate scales the grown model moves twice as far in its tiled matrices.
    naive = grow_width(_trained(kind)[0], 2)
    naive_optimizer = _optimizer(naive.model, {})
    load_moments(naive.model, naive_optimizer, naive.moments, naive.step)
    _step(naive.model, naive_optimizer, batch)
    with torch.no_grad():
        assert (naive.model(probe[0]) - expected).abs().max() > 0.1 * change


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_depth_copies_start_as_identity_with_their_source_moments_and_then_learn(kind):
    state, _ = _trained(kind)
    grown = grow_depth(state, 2)
    assert grown.model.cfg.n_layers == 4
    copy_name = "model.layers.1.self_attn.q_proj.weight"  # the copy of layer 0
    assert torch.equal(grown.moments[copy_name]["exp_avg"],
                       state.moments["model.layers.0.self_attn.q_proj.weight"]["exp_avg"])
    zeroed = ("model.layers.1.post_attention_layernorm.weight" if kind == "dense"
              else "model.layers.1.self_attn.o_proj.weight")
    assert not grown.moments[zeroed]["exp_avg"].any()
    assert grown.moments[zeroed]["exp_avg_sq"].any()
    _loss(grown.model, _batch(3)).backward()
    assert dict(grown.model.named_parameters())[zeroed].grad.abs().sum() > 0  # it will move
    with pytest.raises(ValueError):
        grow_depth(state, 1)


def test_stage_schedule_switches_where_the_grown_size_becomes_more_efficient():
    from lmforge.grow import KAPLAN, _efficiency, kaplan_loss, stage_schedule

    batch = 2**19
    one = stage_schedule([3.5e8], batch, 3.0)
    assert one["saving"] == pytest.approx(0.0, abs=1e-12)
    assert kaplan_loss(3.5e8, one["stages"][0]["end_step"]) == pytest.approx(3.0)

    two = stage_schedule([1.2e8, 3.5e8], batch, 3.0)
    first, second = two["stages"]
    switch = first["loss"]
    assert 3.0 < switch < kaplan_loss(1.2e8, 100)
    assert _efficiency(switch, 1.2e8, batch, KAPLAN) == pytest.approx(
        _efficiency(switch, 3.5e8, batch, KAPLAN), rel=1e-6)
    # The grown model continues from the step where the larger size has the same loss.
    assert kaplan_loss(3.5e8, second["start_step"]) == pytest.approx(switch)
    assert second["start_step"] < first["end_step"]
    assert 0.1 < two["saving"] < 0.4  # 24%: the paper reports savings of up to 22%
    with pytest.raises(ValueError, match="below what"):
        stage_schedule([1e6, 4e6], batch, 1.0)


def _write_metrics(path, rows):
    from lmforge.train import write_metrics

    write_metrics(path, [{"step": s, "loss": loss, "valid_loss": loss, "tokens": t, "flops": f}
                         for s, loss, t, f in rows])
    return path


def test_growth_report_interpolates_the_compute_to_equal_loss(tmp_path):
    from lmforge.growth_report import compare, flops_to_reach, markdown

    assert flops_to_reach([(1.0, 5.0), (3.0, 3.0)], 4.0) == 2.0
    assert flops_to_reach([(1.0, 5.0), (3.0, 3.0)], 2.0) is None
    small = _write_metrics(tmp_path / "small.csv", [(10, 5.0, 100, 1.0), (20, 4.0, 200, 2.0)])
    grown = _write_metrics(tmp_path / "grown.csv", [(10, 3.5, 100, 2.0), (20, 3.0, 200, 4.0)])
    baseline = _write_metrics(tmp_path / "baseline.csv",
                              [(10, 4.5, 100, 2.0), (20, 3.8, 200, 4.0), (30, 3.4, 300, 6.0),
                               (40, 3.25, 400, 8.0)])
    result = compare(small, grown, baseline)
    # The staged curve: (1, 5), (2, 4), (4, 3.5), (6, 3.0); 3.25 is reached half-way to 6.
    assert result["staged_flops_to_target"] == pytest.approx(5.0)
    assert result["flops_ratio"] == pytest.approx(5.0 / 8.0)
    assert result["flops_ratio_at_staged_final"] is None  # the baseline never gets to 3.0
    assert "37.5% saved" in markdown(result)
    worse = _write_metrics(tmp_path / "worse.csv", [(10, 3.9, 100, 2.0), (20, 3.6, 200, 4.0)])
    result = compare(small, worse, baseline)
    assert result["flops_ratio"] is None
    assert result["baseline_flops_to_staged_final"] == pytest.approx(5.0)
    assert "does not reach" in markdown(result)
    short = _write_metrics(tmp_path / "short.csv", [(10, 3.0, 100, 2.0)])
    with pytest.raises(InputError, match="not comparable"):
        compare(small, short, baseline)


def test_baseline_trains_pretraining_settings_for_the_staged_instances():
    from lmforge.plan import baseline_train_config, merged_config

    config = merged_config([], ROOT / "config" / "config.yaml")
    cfg = baseline_train_config(config)
    assert cfg["steps"] == config["pretrain"]["steps"] + config["grow"]["train"]["steps"]
    assert cfg["lr"] == config["pretrain"]["lr"] and "save_moments" not in cfg
    config["grow"]["train"]["global_batch_size"] = 24
    config["grow"]["train"]["micro_batch_size"] = 8
    config["grow"]["train"]["steps"] = 3
    with pytest.raises(InputError, match="not a multiple"):
        baseline_train_config(config)


def test_continuing_the_schedule_refuses_contradicting_settings():
    from lmforge.plan import grow_train_config, merged_config, pretrain_train_config

    config = merged_config([], ROOT / "config" / "config.yaml")
    total = config["pretrain"]["steps"] + config["grow"]["train"]["steps"]
    assert pretrain_train_config(config)["schedule_steps"] == total
    grow = grow_train_config(config)
    assert grow["schedule_offset"] == config["pretrain"]["steps"]
    assert grow["rewarm_steps"] == config["grow"]["train"]["warmup_steps"]
    config["grow"]["train"]["lr"] = 1e-3
    with pytest.raises(InputError, match="lr differ"):
        grow_train_config(config)
    config["grow"]["continue_schedule"] = False
    assert grow_train_config(config) == config["grow"]["train"]
    assert "schedule_steps" not in pretrain_train_config(config)

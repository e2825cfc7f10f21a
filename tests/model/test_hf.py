"""Fidelity against `transformers`: export, import and logits, for OLMo 2 and OLMoE."""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

from lmforge.io.storage import InputError
from lmforge.model.hf import build, export_hf, import_hf, preset_config
from lmforge.model.olmo2 import ModelConfig
from lmforge.model.olmoe import MoE, MoEConfig, load_balancing_loss, router_z_loss

from conftest import train_config

DENSE = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64,
                    max_seq_len=16, rope_theta=500000.0)
SPARSE = MoEConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, mlp_hidden=24,
                   max_seq_len=16, n_experts=6, top_k=2)


def _perturbed(cfg):
    torch.manual_seed(0)
    model = build(cfg).eval()
    for p in model.parameters():  # non-trivial norms too
        p.data.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("cfg", [DENSE, SPARSE, MoEConfig(**{**SPARSE.to_dict(),
                                                             "norm_topk_prob": True})])
def test_export_loads_in_transformers_with_the_same_logits(cfg, tmp_path):
    ours = _perturbed(cfg)
    export_hf(ours, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    expected = "OlmoeForCausalLM" if isinstance(cfg, MoEConfig) else "Olmo2ForCausalLM"
    assert type(theirs).__name__ == expected
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["olmo2", "olmoe"])
def test_transformers_model_imports_with_the_same_logits(kind, tmp_path):
    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=16, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, pad_token_id=None, bos_token_id=None,
                  eos_token_id=None)
    torch.manual_seed(1)
    if kind == "olmo2":
        theirs = transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
            intermediate_size=64, **common))
    else:
        theirs = transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
            intermediate_size=24, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
            **common))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs.eval().save_pretrained(tmp_path / "hf")
    ours = import_hf(tmp_path / "hf").eval()
    assert isinstance(ours.cfg, MoEConfig) == (kind == "olmoe")
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-4


def test_import_refuses_what_it_cannot_represent(tmp_path):
    export_hf(build(DENSE), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 2}))
    with pytest.raises(InputError, match="grouped-query"):
        import_hf(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(InputError, match="not olmo2 or olmoe"):
        import_hf(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "n_layer": 1,
                                                             "num_hidden_layers": 3}))
    with pytest.raises(InputError, match="do not match"):
        import_hf(tmp_path / "hf")


@pytest.mark.parametrize("compute", ["grouped", "padded", "loop"])
def test_moe_is_dropless_and_weights_its_top_k_experts(compute):
    torch.manual_seed(0)
    cfg = MoEConfig(**{**SPARSE.to_dict(), "norm_topk_prob": True, "expert_compute": compute})
    moe = MoE(cfg)
    with torch.no_grad():
        moe.gate.weight[0] += 0.5  # route every token to expert 0: no capacity limit
    x = torch.randn(3, 10, cfg.d_model).abs()
    out, logits = moe(x)
    probs = logits.softmax(-1)
    weights, chosen = probs.topk(cfg.top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    tokens = x.reshape(-1, cfg.d_model)
    experts = moe.experts
    dense = torch.stack([  # every expert on every token
        F.linear(F.silu(F.linear(tokens, experts.gate_proj[e]))
                 * F.linear(tokens, experts.up_proj[e]), experts.down_proj[e])
        for e in range(cfg.n_experts)], dim=1)
    expected = (dense.gather(1, chosen[..., None].expand(-1, -1, cfg.d_model))
                * weights[..., None]).sum(1)
    assert (chosen == 0).any(-1).all()
    assert torch.allclose(out.reshape(-1, cfg.d_model), expected, atol=1e-6)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_grouped_and_padded_experts_equal_the_loop(dtype, atol):
    """Outputs and every gradient of the grouped and padded matmuls equal one matmul per
    expert, with one expert getting no token and the others uneven groups."""
    torch.manual_seed(0)
    results = {}
    for compute in ("loop", "grouped", "padded"):
        torch.manual_seed(1)
        moe = MoE(MoEConfig(**{**SPARSE.to_dict(), "mlp_hidden": 32,
                               "expert_compute": compute})).to(dtype)
        with torch.no_grad():
            for weight in moe.experts.parameters():
                weight.normal_(0, 0.1)
            moe.gate.weight[5] = -1.0  # expert 5 gets no token (the inputs are positive)
        x = torch.rand(4, 12, SPARSE.d_model, dtype=dtype, requires_grad=True)
        out, logits = moe(x)
        (out.float().square().sum() + logits.float().sum()).backward()
        results[compute] = [out, x.grad] + [p.grad for p in moe.parameters()]
        counts = torch.bincount(logits.topk(2).indices.flatten(), minlength=6)
        assert counts[5] == 0 and len(set(counts[:5].tolist())) > 1
    for compute in ("grouped", "padded"):
        for ours, loop in zip(results[compute], results["loop"], strict=True):
            assert torch.allclose(ours.float(), loop.float(), atol=atol), compute


def test_auxiliary_losses_match_transformers_and_their_definitions():
    from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

    torch.manual_seed(0)
    logits = [torch.randn(40, 6), torch.randn(40, 6)]
    ours = load_balancing_loss(logits, top_k=2)
    assert torch.allclose(ours, load_balancing_loss_func(tuple(logits), 6, 2))
    uniform = [torch.zeros(40, 6)]
    assert torch.allclose(router_z_loss(uniform), torch.log(torch.tensor(6.0)) ** 2)
    model = build(SPARSE)
    logits_out, aux = model(torch.randint(0, 97, (2, 16)), return_aux=True)
    assert set(aux) == {"load_balancing", "router_z"} and all(v > 0 for v in aux.values())
    assert aux["load_balancing"].requires_grad


@pytest.mark.parametrize("name,total,active", [
    ("olmo2-1b", 1.485e9, None), ("olmo2-7b", 7.30e9, None), ("olmo2-13b", 13.72e9, None),
    ("olmoe-1b-7b", 6.92e9, 1.28e9)])
def test_published_presets_have_the_published_sizes(name, total, active):
    with torch.device("meta"):
        model = build(preset_config(name))
    assert abs(model.num_params(non_embedding=False) / total - 1) < 0.01
    if active:
        assert abs(model.num_params(non_embedding=False, active=True) / active - 1) < 0.01


def test_checkpoints_of_both_architectures_and_hf_directories_load(tmp_path):
    from lmforge.cli import main as cli
    from lmforge.model.checkpoint import load_model, save_model

    ids = torch.randint(0, 97, (1, 8))
    for name, cfg in (("dense", DENSE), ("sparse", SPARSE)):
        model = _perturbed(cfg)
        save_model(model, tmp_path / name)
        assert cli(["export-hf", "--checkpoint", str(tmp_path / name),
                    "--out", str(tmp_path / f"{name}-hf")]) == 0
        for directory in (tmp_path / name, tmp_path / f"{name}-hf"):
            with torch.no_grad():
                assert torch.equal(load_model(directory).eval()(ids), model(ids))


def test_plan_estimates_memory_and_refuses_what_cannot_fit(capsys):
    from lmforge.cli import main as cli
    from lmforge.train.plan import GIB, check_fits, estimate

    train = train_config(precision="bf16", zero_stage=1, micro_batch_size=1, grad_accum=1)
    plan = estimate(preset_config("olmo2-7b"), train, world_size=8)
    # bf16 weights and gradients (2 + 2 bytes), fp32 master + AdamW moments (12 bytes) / 8 ranks
    assert plan["weights_gib"] == pytest.approx(plan["parameters"] * 2 / GIB)
    assert plan["optimizer_gib"] == pytest.approx(plan["parameters"] * 12 / 8 / GIB)
    assert plan["flops_per_step"] == pytest.approx(
        build_meta("olmo2-7b").flops_per_token() * 4096 * 8)
    check_fits(plan, 80 * GIB)  # fits an 80 GB GPU
    fp32 = estimate(preset_config("olmo2-7b"), train.replace(precision="fp32", zero_stage=0))
    with pytest.raises(InputError, match="lower micro_batch_size"):
        check_fits(fp32, 80 * GIB)
    train_json = json.dumps(train.replace(precision="fp32", zero_stage=0).to_dict())
    assert cli(["plan", "--preset", "olmo2-7b", "--cfg", train_json,
                "--device-memory-gib", "80"]) == 2
    assert cli(["plan", "--preset", "olmoe-1b-7b", "--cfg", json.dumps(train.to_dict()),
                "--world-size", "8", "--device-memory-gib", "80"]) == 0
    assert "active parameters per token | 1.2" in capsys.readouterr().out


def test_plan_counts_activations_on_the_autograd_graph():
    from lmforge.train.plan import block_activation_bytes_per_token

    for name in ("olmo2-tiny", "olmoe-tiny"):
        cfg = preset_config(name, vocab_size=64)
        # a fused attention kernel keeps nothing quadratic: bytes per token do not grow with length
        short, long = (block_activation_bytes_per_token(cfg, torch.bfloat16, tokens=n)
                       for n in (64, 256))
        assert long == pytest.approx(short, rel=0.05)
        # fp32 training keeps every activation at twice the width, except the fp32 norm inputs
        fp32 = block_activation_bytes_per_token(cfg, torch.float32)
        assert 1.4 * short < fp32 < 2 * short
    dense = block_activation_bytes_per_token(preset_config("olmo2-tiny", vocab_size=64),
                                             torch.bfloat16)
    # OLMo 2's fp32 RMSNorms and full-width QK-norm: well above the textbook 34 bytes per sbh
    assert dense / 128 > 60


@pytest.mark.parametrize("preset,overrides,measured_gib", [
    ("olmo2-1b", {}, 84.3), ("olmoe-1b-7b", {"n_layers": 2}, 36.7)])
def test_plan_predicts_the_peak_memory_measured_on_an_h200(preset, overrides, measured_gib):
    """Peaks of `benchmarks/gpu_check.sh` (eager, bf16, ZeRO-0, 4 × 4096 tokens; RESULTS.md)."""
    from lmforge.train.plan import estimate

    plan = estimate(preset_config(preset, **overrides),
                    train_config(precision="bf16", zero_stage=0, micro_batch_size=4, grad_accum=1))
    assert plan["total_gib"] == pytest.approx(measured_gib, rel=0.03)


def build_meta(name):
    with torch.device("meta"):
        return build(preset_config(name))

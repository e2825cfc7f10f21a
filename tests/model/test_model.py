import pytest
import torch

from lmforge.model.checkpoint import load_model, save_model
from lmforge.model.olmo2 import ModelConfig, Olmo2, causal_lm_loss, cross_entropy_and_z_loss

CFG = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, max_seq_len=16)


def test_forward_is_causal():
    torch.manual_seed(0)
    model = Olmo2(CFG).eval()
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 12, 97)
    assert torch.allclose(a[:, :8], b[:, :8]) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_checkpoint_round_trip(tmp_path):
    model = Olmo2(CFG)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))


def test_fused_cross_entropy_and_z_loss_match_the_separate_computations():
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 97, requires_grad=True)
    labels = torch.randint(0, 97, (2, 9))
    labels[0, :4] = -100
    ce, z = cross_entropy_and_z_loss(logits, labels)
    (ce + 1e-2 * z).backward()
    fused_grad = logits.grad.clone()
    logits.grad = None
    reference_ce = causal_lm_loss(logits, labels)
    reference_z = logits.float().logsumexp(-1)[labels != -100].pow(2).mean()
    (reference_ce + 1e-2 * reference_z).backward()
    assert ce.item() == pytest.approx(reference_ce.item(), rel=1e-6)
    assert z.item() == pytest.approx(reference_z.item(), rel=1e-6)
    assert torch.allclose(fused_grad, logits.grad, atol=1e-6)
    assert fused_grad[0, :4].abs().max() == 0  # masked positions get no gradient


def test_a_soup_averages_weights_and_refuses_other_architectures(tmp_path):
    from lmforge.io.storage import InputError
    from lmforge.model.checkpoint import save_model, soup

    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(Olmo2(CFG))
        save_model(models[-1], tmp_path / f"m{seed}")
    averaged = soup([tmp_path / "m1", tmp_path / "m2"])
    for (name, value), a, b in zip(averaged.named_parameters(), models[0].parameters(),
                                   models[1].parameters()):
        assert torch.allclose(value, (a + b) / 2), name
    torch.manual_seed(3)
    save_model(Olmo2(ModelConfig(**{**CFG.to_dict(), "n_layers": 3})), tmp_path / "deeper")
    with pytest.raises(InputError, match="cannot average"):
        soup([tmp_path / "m1", tmp_path / "deeper"])
    with pytest.raises(InputError, match="at least two"):
        soup([tmp_path / "m1"])


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("architecture", ["olmo2", "olmoe"])
def test_the_chunked_loss_head_equals_the_eager_one_with_its_gradients(architecture):
    from lmforge.model.olmoe import MoEConfig, Olmoe

    torch.manual_seed(0)
    shape = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=2, mlp_hidden=48, max_seq_len=16)
    model = Olmoe(MoEConfig(**shape, n_experts=4)) if architecture == "olmoe" else \
        Olmo2(ModelConfig(**shape))
    inputs = torch.randint(0, 97, (3, 16))
    labels = torch.randint(0, 97, (3, 16))
    labels[0, :5] = labels[2, 9:] = -100
    z_weight = 1e-2  # large, so a wrong z-loss gradient shows

    def forward(**loss):
        return model(inputs, return_aux=True, **loss)[0] if architecture == "olmoe" else \
            model(inputs, **loss)

    ce, z = cross_entropy_and_z_loss(forward(), labels)
    eager = _grads(model, ce + z_weight * z)
    # 48 tokens in chunks of 7: the last chunk is short, and chunks straddle rows.
    loss, chunked_ce, chunked_z = forward(labels=labels, z_weight=z_weight, chunk_tokens=7)
    assert chunked_ce.item() == pytest.approx(ce.item(), rel=1e-6)
    assert chunked_z.item() == pytest.approx(z.item(), rel=1e-6)
    chunked = _grads(model, 3.0 * loss)  # the upstream gradient scales every gradient
    for name, grad in eager.items():
        torch.testing.assert_close(chunked[name], 3.0 * grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation: the same loss, no gradients computed
        assert forward(labels=labels, z_weight=z_weight, chunk_tokens=5)[1].item() == \
            pytest.approx(ce.item(), rel=1e-6)


def test_activation_checkpointing_recomputes_the_same_gradients():
    torch.manual_seed(0)
    model = Olmo2(ModelConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=2, mlp_hidden=48,
                              max_seq_len=16))
    inputs, labels = torch.randint(0, 61, (2, 16)), torch.randint(0, 61, (2, 16))
    kept = _grads(model, causal_lm_loss(model(inputs), labels))
    model.activation_checkpointing = True
    recomputed = _grads(model, causal_lm_loss(model(inputs), labels))
    for name, grad in kept.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=0, atol=0, msg=name)

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

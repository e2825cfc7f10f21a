import pytest
import torch

from lmforge.checkpoint import load_model, save_model
from lmforge.grow import grow_depth
from lmforge.model import ModelConfig, Olmo2, causal_lm_loss

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


def test_matches_transformers_olmo2_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = Olmo2(CFG).eval()
    for p in ours.parameters():  # non-trivial norms too
        p.data.add_(0.01 * torch.randn_like(p))
    hf_cfg = transformers.Olmo2Config(
        vocab_size=CFG.vocab_size, hidden_size=CFG.d_model, intermediate_size=CFG.mlp_hidden,
        num_hidden_layers=CFG.n_layers, num_attention_heads=CFG.n_heads,
        num_key_value_heads=CFG.n_heads, max_position_embeddings=CFG.max_seq_len,
        rope_theta=CFG.rope_theta, rms_norm_eps=CFG.rms_norm_eps, attention_bias=False,
        tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )
    hf = transformers.Olmo2ForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    model = Olmo2(CFG)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))


def test_depth_growth_preserves_the_function_and_then_learns():
    torch.manual_seed(0)
    small = Olmo2(CFG).eval()
    grown = grow_depth(small, 2).eval()
    assert grown.cfg.n_layers == 4 and len(grown.model.layers) == 4
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.allclose(small(ids), grown(ids), atol=1e-6)
    loss = causal_lm_loss(grown(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    twin = grown.model.layers[1]
    assert twin.post_attention_layernorm.weight.grad.abs().sum() > 0  # the copy will move
    with pytest.raises(ValueError):
        grow_depth(small, 1)

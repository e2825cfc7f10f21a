"""The KV-cache generation routine against recomputing the whole sequence at every step."""

import pytest
import torch

from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.model.olmoe import MoEConfig, Olmoe

EOS = 0


def _model(kind: str, max_seq_len: int = 24):
    torch.manual_seed(0)
    if kind == "olmoe":
        cfg = MoEConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, mlp_hidden=48,
                        max_seq_len=max_seq_len, n_experts=4, top_k=2)
        return Olmoe(cfg).eval()
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, mlp_hidden=48,
                      max_seq_len=max_seq_len, init_std=0.2)
    return Olmo2(cfg).eval()


@torch.no_grad()
def _recomputed(model, prompt: list[int], steps: int, prefix=None) -> list[int]:
    """Greedy decoding that runs the whole (last max_seq_len tokens of the) sequence each step."""
    ids, new = list(prompt), []
    room = model.cfg.max_seq_len - (0 if prefix is None else prefix.shape[-2])
    for _ in range(steps):
        window = torch.tensor([(ids + new)[-room:]])
        kwargs = {} if prefix is None else {"prefix": prefix}
        token = int(model(window, **kwargs)[0, -1].argmax())
        new.append(token)
        if token == EOS:
            break
    return new


@pytest.mark.parametrize("kind", ["olmo2", "olmoe"])
def test_cached_greedy_decoding_equals_recomputing(kind):
    model = _model(kind)
    prompts = [[5, 6, 7, 8, 9], [3, 11], [20, 21, 22, 23, 24, 25, 26]]
    together = model.generate(prompts, 8, EOS, pad=1)
    for prompt, (tokens, ended) in zip(prompts, together):
        alone = model.generate([prompt], 8, EOS)[0]
        assert (tokens, ended) == alone
        assert tokens == _recomputed(model, prompt, 8)
        assert ended == (tokens[-1] == EOS)


def test_a_prefix_and_a_sliding_window_decode_as_the_full_sequence_would():
    model = _model("olmo2", max_seq_len=12)
    prompt = [4, 9, 13, 2, 7, 30, 31, 5]
    # Past the context: the last max_seq_len tokens, as lm-eval's generation keeps them.
    [(tokens, _)] = model.generate([prompt], 10, EOS)
    assert tokens == _recomputed(model, prompt, 10) and len(tokens) <= 10
    prefix = torch.randn(1, 3, model.cfg.d_model)
    [(tokens, _)] = model.generate([prompt[:5]], 10, EOS, prefix=prefix)
    assert tokens == _recomputed(model, prompt[:5], len(tokens), prefix)
    assert len(tokens) <= model.cfg.max_seq_len - 3 - 5  # a prefix leaves no room to slide


def test_sampling_is_seeded_and_stop_ends_a_row():
    model = _model("olmo2")
    prompts = [[5, 6, 7], [8, 9, 10]]
    first = model.generate(prompts, 6, EOS, temperature=1.0, top_p=0.9,
                           generator=torch.Generator().manual_seed(3))
    again = model.generate(prompts, 6, EOS, temperature=1.0, top_p=0.9,
                           generator=torch.Generator().manual_seed(3))
    assert first == again
    stopped = model.generate(prompts, 6, EOS, stop=lambda new: len(new) == 2)
    assert all(len(tokens) <= 2 for tokens, _ in stopped)
    assert model.training is False and model.generate(prompts, 0, EOS) == [([], False)] * 2

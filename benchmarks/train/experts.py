"""OLMoE experts on the CPU: one matmul per expert (the loop) against PyTorch's grouped matmul
and a padded batched matmul, the same model, weights and tokens, eager, one process.

    python benchmarks/train/experts.py [--steps 5] [--experts 64] [--top-k 8] [--tokens 4096]

An OLMoE of 2 blocks (d_model 256, experts of hidden size 128: OLMoE 1B-7B's 64 experts, top 8,
at an eighth of its width), forward + backward of the next-token loss over `--tokens` tokens, fp32.
Tokens/s are the median of `--steps` steps after one warm-up step. Last line: `ratio: X`,
grouped tokens/s over the loop's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import print_table  # noqa: E402

from lmforge.model.olmo2 import causal_lm_loss  # noqa: E402
from lmforge.model.olmoe import MoEConfig, Olmoe  # noqa: E402


def step_seconds(model: Olmoe, ids: torch.Tensor, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        causal_lm_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    seq = 256
    cfg = MoEConfig(vocab_size=1024, d_model=256, n_layers=2, n_heads=4, mlp_hidden=128,
                    max_seq_len=seq, n_experts=args.experts, top_k=args.top_k)
    torch.manual_seed(0)
    reference = Olmoe(cfg)
    ids = torch.randint(0, cfg.vocab_size, (args.tokens // seq, seq))
    rows, losses = [], {}
    for compute in ("loop", "padded", "grouped"):
        model = Olmoe(MoEConfig(**{**cfg.to_dict(), "expert_compute": compute}))
        model.load_state_dict(reference.state_dict())
        seconds = statistics.median(step_seconds(model, ids, args.steps))
        with torch.no_grad():
            losses[compute] = causal_lm_loss(model(ids[:, :-1]), ids[:, 1:]).item()
        rows.append({"experts": compute, "step s": seconds, "tokens/s": args.tokens / seconds,
                     "loss": losses[compute]})
    print_table(rows, floats=4)
    spread = max(losses.values()) - min(losses.values())
    print(f"loss spread across the three: {spread:.2e}")
    print(f"ratio: {rows[2]['tokens/s'] / rows[0]['tokens/s']:.2f}")


if __name__ == "__main__":
    main()

"""Training memory on the CPU: the loss head eager vs in chunks, and blocks with and without
activation checkpointing, each one forward + backward in its own process, measured from outside
(peak RSS), beside what `lmforge plan` predicts for the same tensors.

    python benchmarks/train/memory.py [--vocab 50304] [--tokens 4096] [--chunk 1024]

head: an OLMo 2 output head (d_model 512) and its loss (cross-entropy + z-loss) over `--tokens`
tokens, fp32. blocks: an OLMo 2 of 8 blocks (d_model 512) over the same tokens. Both report the
peak RSS above the process's RSS once weights and inputs exist. Last line: `ratio: X`, the
eager head's peak over the chunked head's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import measure, print_table  # noqa: E402

STEP = """
import json, resource, sys
import torch
from lmforge.model.olmo2 import ModelConfig, Olmo2, cross_entropy_and_z_loss
from lmforge.train.config import TrainConfig
from lmforge.train.plan import block_activation_bytes_per_token, head_bytes

mode, vocab, tokens, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
seq = 512
layers = 8 if mode.startswith("blocks") else 1
model = Olmo2(ModelConfig(vocab_size=vocab if mode.startswith("head") else 512, d_model=512,
                          n_layers=layers, n_heads=8, mlp_hidden=1536, max_seq_len=seq))
ids = torch.randint(0, model.cfg.vocab_size, (tokens // seq, seq))
labels = torch.randint(0, model.cfg.vocab_size, (tokens // seq, seq))
if mode.startswith("head"):  # the head alone: hidden states in, gradients out
    hidden = torch.randn(tokens // seq, seq, 512, requires_grad=True)
    torch.autograd.grad(hidden.sum(), hidden)  # autograd's own first-use allocations
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "head_eager":
        ce, z = cross_entropy_and_z_loss(model.head(hidden), labels)
        loss = ce + 1e-5 * z
    else:
        loss = model.head_loss(hidden, labels, 1e-5, chunk)[0]
    loss.backward()
    predicted = head_bytes(model.cfg, tokens, 4, chunk if mode == "head_chunked" else 0)
else:
    model.activation_checkpointing = mode == "blocks_checkpointed"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(ids, labels=labels, z_weight=1e-5, chunk_tokens=512)[0].backward()
    per_block = block_activation_bytes_per_token(model.cfg, torch.float32)
    kept = (layers * 512 * 4 + per_block) if model.activation_checkpointing else layers * per_block
    predicted = tokens * kept
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"above_base_mb": (peak - base) / 1024, "predicted_mb": predicted / 2**20,
                  "loss": loss.item() if mode.startswith("head") else None}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    rows, peaks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("head_eager", "head_chunked", "blocks_kept", "blocks_checkpointed"):
            _, _, out = measure([sys.executable, "-c", STEP, mode, str(args.vocab),
                                 str(args.tokens), str(args.chunk)], Path(tmp) / f"{mode}.log")
            peaks[mode] = out["above_base_mb"]
            rows.append({"run": mode, "peak above base MB": out["above_base_mb"],
                         "plan MB": out["predicted_mb"]})
    print(f"OLMo 2 d_model 512, {args.tokens} tokens, fp32; head: vocabulary {args.vocab}, "
          f"chunks of {args.chunk} tokens; blocks: 8")
    print_table(rows, floats=0)
    print(f"ratio: {peaks['head_eager'] / peaks['head_chunked']:.2f}")


if __name__ == "__main__":
    main()

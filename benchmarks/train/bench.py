"""Training throughput: lmforge's trainer (DeepSpeed engine) vs a plain `transformers` + PyTorch
loop, the same OLMo 2 model and data, each in its own process.

    python benchmarks/train/bench.py [--steps 30] [--d-model 256] [--layers 4] [--seq 256]
    python benchmarks/train/bench.py --gpu      (OLMo 2 1B preset, bf16, one GPU: tokens/s, MFU)

CPU mode: the plain loop is `Olmo2ForCausalLM` with `torch.optim.AdamW` (β 0.9/0.95), gradient
clipping 1.0 and the same micro-batches; tokens/s are taken over the steps after the first
`--warmup` (start-up, DeepSpeed's set-up and the final checkpoint excluded for both). Last
line: `ratio: X`, lmforge tokens/s over the plain loop's. GPU mode needs CUDA and says so
otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import measure  # noqa: E402

COMMON = """
import json, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.manual_seed(0)
rng = np.random.default_rng(0)
tokens = rng.integers(0, args["vocab"], size=args["seq"] * 4096, dtype=np.int64)
train_cfg = {"steps": args["steps"], "micro_batch_size": args["batch"], "grad_accum": 1,
             "lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 2, "weight_decay": 0.1,
             "grad_clip": 1.0, "zero_stage": args["zero_stage"], "precision": args["precision"],
             "log_every": 1}
"""

LMFORGE = COMMON + """
from lmforge.hf import preset_config, build
from lmforge.train import instance_batches, train
if args["preset"]:
    cfg = preset_config(args["preset"], max_seq_len=args["seq"] + 1)
else:
    cfg = preset_config("olmo2-tiny", vocab_size=args["vocab"], d_model=args["d_model"],
                        n_layers=args["layers"], n_heads=args["d_model"] // 64,
                        mlp_hidden=args["d_model"] * 3, max_seq_len=args["seq"] + 1)
model = build(cfg)  # fp32 master weights; DeepSpeed's bf16 mode casts the working copy
batches = instance_batches(tokens % cfg.vocab_size, args["seq"] + 1, train_cfg, seed=1)
train(model, batches, {**train_cfg, "peak_flops": args.get("peak_flops")}, 1,
      sys.argv[2] + "/ckpt", sys.argv[2] + "/metrics.csv")
import csv
rows = list(csv.DictReader(open(sys.argv[2] + "/metrics.csv")))[args["warmup"]:]
tps = sum(float(r["tokens_per_s"]) for r in rows) / len(rows)
mfu = [float(r["mfu"]) for r in rows if r["mfu"]]
print(json.dumps({"tokens_per_s": tps, "mfu": sum(mfu) / len(mfu) if mfu else None,
                  "flops_per_token": model.flops_per_token()}))
"""

PLAIN = COMMON + """
import transformers
hf_cfg = transformers.Olmo2Config(
    vocab_size=args["vocab"], hidden_size=args["d_model"], intermediate_size=args["d_model"] * 3,
    num_hidden_layers=args["layers"], num_attention_heads=args["d_model"] // 64,
    max_position_embeddings=args["seq"] + 1, rms_norm_eps=1e-6, tie_word_embeddings=False,
    pad_token_id=None, bos_token_id=None, eos_token_id=None)
model = transformers.Olmo2ForCausalLM(hf_cfg)
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                              weight_decay=0.1)
order = np.random.default_rng(1).permutation(len(tokens) // (args["seq"] + 1))
timed_tokens, timed_seconds = 0, 0.0
for step in range(args["steps"]):
    rows = order[step * args["batch"]:(step + 1) * args["batch"]]
    data = torch.from_numpy(np.stack([tokens[i * (args["seq"] + 1):(i + 1) * (args["seq"] + 1)]
                                      for i in rows]))
    start = time.perf_counter()
    loss = model(input_ids=data[:, :-1], labels=data[:, :-1]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step >= args["warmup"]:
        timed_seconds += time.perf_counter() - start
        timed_tokens += data[:, :-1].numel()
print(json.dumps({"tokens_per_s": timed_tokens / timed_seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--zero-stage", type=int, default=0,
                        help="ZeRO stage of lmforge's run (0: one process has nothing to shard)")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    settings = {"steps": args.steps, "warmup": args.warmup, "d_model": args.d_model,
                "layers": args.layers, "seq": args.seq, "batch": args.batch,
                "vocab": args.vocab, "zero_stage": args.zero_stage, "precision": "fp32",
                "preset": None}
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-train-") as work:
        if args.gpu:
            import torch

            if not torch.cuda.is_available():
                sys.exit("no CUDA device here: the GPU mode was not run")
            # Micro-batch 2 of 4096 tokens: what `lmforge plan` fits on an 80 GB card.
            gpu = {**settings, "preset": "olmo2-1b", "precision": "bf16", "seq": 4095,
                   "batch": 2, "zero_stage": 0}
            seconds, rss, out = measure([sys.executable, "-c", LMFORGE, json.dumps(gpu), work],
                                        Path(work) / "gpu.log")
            print(f"| {torch.cuda.get_device_name()} | OLMo 2 1B bf16 | "
                  f"{out['tokens_per_s']:.0f} tokens/s | MFU {out['mfu']:.1%} |")
            return
        ours = measure([sys.executable, "-c", LMFORGE, json.dumps(settings), work],
                       Path(work) / "lmforge.log")
        plain = measure([sys.executable, "-c", PLAIN, json.dumps(settings), work],
                        Path(work) / "plain.log")
    print(f"OLMo 2, d_model {args.d_model}, {args.layers} layers, sequence {args.seq}, "
          f"micro-batch {args.batch}, fp32, CPU; {args.steps - args.warmup} timed steps")
    print("| trainer | tokens/s | peak RSS MB |")
    print("| --- | ---: | ---: |")
    for name, (_, rss, out) in ((f"lmforge (DeepSpeed ZeRO-{args.zero_stage})", ours),
                                ("transformers + PyTorch loop", plain)):
        print(f"| {name} | {out['tokens_per_s']:.0f} | {rss:.0f} |")
    print(f"ratio: {ours[2]['tokens_per_s'] / plain[2]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()

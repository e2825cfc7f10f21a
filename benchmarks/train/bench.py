"""Training throughput: lmforge's trainer (DeepSpeed engine) vs a plain `transformers` + PyTorch
loop, the same OLMo 2 model and data, each in its own process.

    python benchmarks/train/bench.py [--steps 30] [--d-model 256] [--layers 4] [--seq 256]
    python benchmarks/train/bench.py --gpu      (OLMo 2 1B preset, bf16, one GPU: tokens/s, MFU)
    benchmarks/gpu_check.sh                     (the same on a lent GPU machine, carried wheels)

CPU mode: the plain loop is `Olmo2ForCausalLM` with `torch.optim.AdamW` (β 0.9/0.95), gradient
clipping 1.0 and the same micro-batches; tokens/s are taken over the steps after the first
`--warmup` (start-up, DeepSpeed's set-up, compilation and the final checkpoint excluded for
both). Like with like: both eager, or with `--compile` both with each block compiled in place.
Last line: `ratio: X`, lmforge tokens/s over the plain loop's. GPU mode needs CUDA and says so
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
             "log_every": 1, "compile": args.get("compile", False)}
"""

LMFORGE = COMMON + """
from lmforge.model.hf import preset_config, build
from lmforge.train.data import instance_batches
from lmforge.train.loop import train
if args["preset"]:
    cfg = preset_config(args["preset"], max_seq_len=args["seq"] + 1, **args["overrides"])
else:
    cfg = preset_config("olmo2-tiny", vocab_size=args["vocab"], d_model=args["d_model"],
                        n_layers=args["layers"], n_heads=args["d_model"] // 64,
                        mlp_hidden=args["d_model"] * 3, max_seq_len=args["seq"] + 1)
# fp32 weights (DeepSpeed's bf16 mode keeps them as master copy), initialised on the GPU when
# there is one: a CPU init of the 1B preset takes longer than the timed steps.
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = build(cfg)
batches = instance_batches(tokens % cfg.vocab_size, args["seq"] + 1, train_cfg, seed=1)
train(model, batches, {**train_cfg, "peak_flops": args.get("peak_flops")}, 1,
      sys.argv[2] + "/ckpt", sys.argv[2] + "/metrics.csv")
import csv
all_rows = list(csv.DictReader(open(sys.argv[2] + "/metrics.csv")))
rows = all_rows[args["warmup"]:]
tps = sum(float(r["tokens_per_s"]) for r in rows) / len(rows)
mfu = [float(r["mfu"]) for r in rows if r["mfu"]]
print(json.dumps({"tokens_per_s": tps, "mfu": sum(mfu) / len(mfu) if mfu else None,
                  "flops_per_token": model.flops_per_token(),
                  "first_loss": float(all_rows[0]["loss"]),
                  "last_loss": float(all_rows[-1]["loss"]),
                  "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30
                  if torch.cuda.is_available() else None}))
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
if args["compile"]:  # the same unit lmforge compiles: each decoder layer in place
    for layer in model.model.layers:
        layer.compile()
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


# GPU mode: the OLMo 2 1B preset as it trains (bf16, sequence 4096, ZeRO-1: bf16 accumulates
# gradients in fp32 only under ZeRO, and on one GPU stage 1 holds what stage 0 does), eager and
# with compiled blocks; and the OLMoE-1B-7B layer shape cut to 2 layers (the full 7B model and
# its AdamW state do not fit one GPU).
GPU_VARIANTS = (
    ("OLMo 2 1B, ZeRO-1, eager", "olmo2-1b", {}, {"zero_stage": 1, "compile": False}),
    ("OLMo 2 1B, ZeRO-1, compiled blocks", "olmo2-1b", {}, {"zero_stage": 1, "compile": True}),
    ("OLMoE 1B-7B shape, 2 layers, eager, grouped experts", "olmoe-1b-7b", {"n_layers": 2},
     {"zero_stage": 1, "compile": False}),
    ("OLMoE 1B-7B shape, 2 layers, eager, experts looped", "olmoe-1b-7b",
     {"n_layers": 2, "expert_compute": "loop"}, {"zero_stage": 1, "compile": False}),
    # The plan's activation model was fitted to the two eager peaks above; this width (4096)
    # and depth were not used, so its row checks the plan out of sample.
    ("OLMo 2 7B shape, 4 layers, eager (plan not fitted here)", "olmo2-7b", {"n_layers": 4},
     {"zero_stage": 1, "compile": False}),
)


def largest_fitting_micro_batch(preset: str, overrides: dict, run: dict) -> tuple[int, dict]:
    """The largest micro-batch `lmforge plan` fits into 90% of this GPU, and its plan."""
    from lmforge.model.hf import preset_config
    from lmforge.train.config import TrainConfig
    from lmforge.train.plan import device_memory_bytes, estimate

    cfg = preset_config(preset, max_seq_len=run["seq"] + 1, **overrides)
    memory = device_memory_bytes("cuda")
    for batch in (4, 2, 1):
        # The memory plan reads the layout only: the optimizer settings are the run's own.
        train = TrainConfig(steps=run["steps"], micro_batch_size=batch, grad_accum=1, lr=1e-3,
                            min_lr_ratio=0.1, warmup_steps=2, weight_decay=0.1, grad_clip=1.0,
                            zero_stage=run["zero_stage"], precision=run["precision"],
                            log_every=1)
        plan = estimate(cfg, train)
        if plan["total_gib"] * 2**30 <= 0.9 * memory:
            return batch, plan
    sys.exit(f"{preset} does not fit this GPU even at micro-batch 1")


def gpu_mode(settings: dict, steps: int) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device here: the GPU mode was not run")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, sequence 4096, "
          f"{steps} steps, tokens/s and MFU over the steps after the first {settings['warmup']}; "
          "MFU against the data sheet's dense bf16 peak", flush=True)
    print("| run | micro-batch | tokens/s | MFU | peak GPU GiB (plan) | loss first → last |")
    print("| --- | ---: | ---: | ---: | ---: | --- |", flush=True)
    # The final checkpoint (≈ 16 bytes per parameter) goes to RAM, not the disk.
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    for name, preset, overrides, train_overrides in GPU_VARIANTS:
        run = {**settings, "steps": steps, "preset": preset, "overrides": overrides,
               "precision": "bf16", "seq": 4095, **train_overrides}
        run["batch"], plan = largest_fitting_micro_batch(preset, overrides, run)
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-gpu-", dir=scratch) as work:
            try:
                _, _, out = measure([sys.executable, "-c", LMFORGE, json.dumps(run), work],
                                    Path(work) / "gpu.log")
            except SystemExit as failure:  # one failing variant must not hide the others
                print(f"| {name} | {run['batch']} | failed: {str(failure)[-600:]!r} |||",
                      flush=True)
                continue
        print(f"| {name} | {run['batch']} | {out['tokens_per_s']:,.0f} | {out['mfu']:.1%} | "
              f"{out['peak_gpu_gib']:.1f} ({plan['total_gib']:.1f}) | "
              f"{out['first_loss']:.3f} → {out['last_loss']:.3f} |", flush=True)


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
    parser.add_argument("--compile", action="store_true",
                        help="both trainers with compiled blocks (lmforge's `compile: true`)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--gpu-steps", type=int, default=25)
    args = parser.parse_args()
    settings = {"steps": args.steps, "warmup": args.warmup, "d_model": args.d_model,
                "layers": args.layers, "seq": args.seq, "batch": args.batch,
                "vocab": args.vocab, "zero_stage": args.zero_stage, "precision": "fp32",
                "preset": None, "overrides": {}, "compile": args.compile}
    if args.gpu:
        gpu_mode(settings, args.gpu_steps)
        return
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-train-") as work:
        ours = measure([sys.executable, "-c", LMFORGE, json.dumps(settings), work],
                       Path(work) / "lmforge.log")
        plain = measure([sys.executable, "-c", PLAIN, json.dumps(settings), work],
                        Path(work) / "plain.log")
    print(f"OLMo 2, d_model {args.d_model}, {args.layers} layers, sequence {args.seq}, "
          f"micro-batch {args.batch}, fp32, CPU; {args.steps - args.warmup} timed steps")
    print("| trainer | tokens/s | peak RSS MB |")
    print("| --- | ---: | ---: |")
    compiled = ", compiled blocks" if args.compile else ", eager"
    for name, (_, rss, out) in ((f"lmforge (DeepSpeed ZeRO-{args.zero_stage}{compiled})", ours),
                                (f"transformers + PyTorch loop{compiled}", plain)):
        print(f"| {name} | {out['tokens_per_s']:.0f} | {rss:.0f} |")
    print(f"ratio: {ours[2]['tokens_per_s'] / plain[2]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()

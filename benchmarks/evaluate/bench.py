"""Evaluation throughput: lmforge vs lm-evaluation-harness, the same `transformers` model and
the same OLMES request dump, fp32, CPU, at two shapes.

    python benchmarks/evaluate/bench.py [--task openbookqa] [--limit N]

Shapes: d_model 256 × 4 layers, where the 100k-vocabulary output head is ~90% of the FLOPs per
token (lmforge applies it only at the continuation's positions, lm-eval at every position), and
d_model 1024 × 16 layers, where it is a third. Each side is timed from loading the model to
the last score (lm-eval: `simple_evaluate`, which also builds its dataset; lmforge: `lm.load` +
scoring), each in its own process; lmforge skips its unconditional (PMI) requests here, which
lm-eval's `acc`/`acc_norm` do not make. Last line: `ratio: X`, lmforge instances/s over
lm-eval's at the shape where the head is the minor share (the conservative one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_eval_parity as parity  # noqa: E402

LMFORGE = """
import json, sys, time
from lmforge.eval.formats import load_olmes_requests
from lmforge.eval.tasks import score_choices
from lmforge.eval.lm import load
start = time.perf_counter()
_, instances = load_olmes_requests(sys.argv[2])
limit = int(sys.argv[4]) or None
results = score_choices(load(sys.argv[1], batch_size=int(sys.argv[3])), instances[:limit],
                        unconditional=False)
print(json.dumps({"seconds": time.perf_counter() - start, "documents": len(results)}))
"""


SHAPES = ((256, 4), (1024, 16))  # (d_model, layers): head-dominated, then body-dominated
VOCAB = 100352  # dolma2's


def head_share(d_model: int, layers: int) -> float:
    """The output head's share of the forward FLOPs per token (attention scores left out)."""
    head, body = d_model * VOCAB, layers * 12 * d_model**2
    return head / (head + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="openbookqa")
    parser.add_argument("--limit", type=int, help="score only the first N questions")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    dump = parity.SHARED / "olmes" / args.task / "rc_0shot"
    print(f"OLMo 2, dolma2 tokenizer, fp32, CPU; OLMES {args.task} rc 0-shot, batch size "
          f"{args.batch_size}")
    print("| shape | head share of FLOPs | evaluator | questions | seconds | questions/s |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    ratios = []
    for d_model, layers in SHAPES:
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-eval-") as work:
            work = Path(work)
            model = parity.make_model(work / "model", d_model, layers)
            ours = json.loads(subprocess.run(
                [sys.executable, "-c", LMFORGE, str(model), str(dump), str(args.batch_size),
                 str(args.limit or 0)],
                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            run = parity.run_lm_eval(model, [dump], work, args.limit)
            peer = {"seconds": run["seconds"], **run["tasks"][args.task]}
        rates = []
        for name, result in (("lmforge", ours), ("lm-evaluation-harness 0.4.13", peer)):
            rates.append(result["documents"] / result["seconds"])
            print(f"| d {d_model} × {layers} | {head_share(d_model, layers):.0%} | {name} | "
                  f"{result['documents']} | {result['seconds']:.1f} | {rates[-1]:.1f} |")
        ratios.append(rates[0] / rates[1])
        print(f"ratio at d {d_model} × {layers}: {ratios[-1]:.2f}", flush=True)
    print(f"ratio: {ratios[-1]:.2f}")


if __name__ == "__main__":
    main()

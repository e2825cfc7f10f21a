"""Evaluation throughput: lmforge vs lm-evaluation-harness, the same `transformers` model and
the same OLMES request dump (OpenBookQA, 500 questions × 4 choices), fp32, CPU.

    python benchmarks/evaluate/bench.py [--task openbookqa] [--d-model 256] [--layers 4]

Each side is timed from loading the model to the last score (lm-eval: `simple_evaluate`,
which also builds its dataset; lmforge: `lm.load` + scoring), each in its own process; lmforge
skips its unconditional (PMI) requests here, which lm-eval's `acc`/`acc_norm` do not make.
Last line: `ratio: X`, lmforge instances/s over lm-eval's.
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
from lmforge.evaltasks import load_olmes_requests, score_choices
from lmforge.lm import load
start = time.perf_counter()
_, instances = load_olmes_requests(sys.argv[2])
results = score_choices(load(sys.argv[1], batch_size=int(sys.argv[3])), instances,
                        unconditional=False)
print(json.dumps({"seconds": time.perf_counter() - start, "documents": len(results)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="openbookqa")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    dump = parity.SHARED / "olmes" / args.task / "rc_0shot"
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-eval-") as work:
        work = Path(work)
        model = parity.make_model(work / "model", args.d_model, args.layers)
        ours = json.loads(subprocess.run(
            [sys.executable, "-c", LMFORGE, str(model), str(dump), str(args.batch_size)],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        peer = parity.run_lm_eval(model, dump, work)
    print(f"OLMo 2 d_model {args.d_model}, {args.layers} layers, dolma2 tokenizer, fp32, CPU; "
          f"OLMES {args.task} rc 0-shot, batch size {args.batch_size}")
    print("| evaluator | questions | seconds | questions/s |")
    print("| --- | ---: | ---: | ---: |")
    rates = []
    for name, result in (("lmforge", ours), ("lm-evaluation-harness 0.4.13", peer)):
        rates.append(result["documents"] / result["seconds"])
        print(f"| {name} | {result['documents']} | {result['seconds']:.1f} | {rates[-1]:.1f} |")
    print(f"ratio: {rates[0] / rates[1]:.2f}")


if __name__ == "__main__":
    main()

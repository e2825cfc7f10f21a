"""lmforge's ranked classification vs lm-evaluation-harness on OLMES request dumps.

A random-init OLMo 2 (d_model 64, 2 layers) with OLMo 2's own tokenizer (dolma2, from
../shared/data/tokenizers) is exported to a `transformers` directory; lmforge and lm-eval 0.4.13
(its own venv, `make peers`) score every request of the dump in fp32 on the CPU. Prints the
largest per-request log-likelihood difference and both accuracies (lm-eval's `acc` and
`acc_norm` are lmforge's `acc_raw` and `acc_per_char`).

    python benchmarks/evaluate/lm_eval_parity.py [--tasks copa openbookqa]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
PEER = Path(os.environ.get("LM_EVAL_PYTHON", ROOT / ".venv-peers/lm-eval/bin/python"))


def make_model(out: Path, d_model: int = 64, n_layers: int = 2) -> Path:
    import torch

    from lmforge.model.hf import build, export_hf, preset_config

    torch.manual_seed(0)
    model = build(preset_config("olmo2-tiny", vocab_size=100352, d_model=d_model,
                                n_layers=n_layers, n_heads=d_model // 32,
                                mlp_hidden=2 * d_model, max_seq_len=512))
    export_hf(model, out, tokenizer=SHARED / "tokenizers" / "allenai_dolma2.json")
    return out


def run_lmforge(model, dump: Path, limit: int | None = None) -> dict:
    """lmforge's scores of a dump with `model` (a loaded lmforge.eval.lm.LanguageModel)."""
    from lmforge.eval.formats import load_olmes_requests
    from lmforge.eval.tasks import choice_metrics, score_choices

    _, instances = load_olmes_requests(dump)
    results = score_choices(model, instances[:limit])
    metrics = choice_metrics(results)
    return {"documents": len(results), "acc": metrics["acc_raw"],
            "acc_norm": metrics["acc_per_char"], "loglikelihoods": [r["logprobs"] for r in results]}


def run_lm_eval(model_dir: Path, dumps: list[Path], work: Path, limit: int | None = None) -> dict:
    """lm-eval on every dump in one process: {"seconds": all dumps, "tasks": {task: scores}}."""
    if not PEER.exists():
        sys.exit(f"no lm-eval venv at {PEER}: run `make peers`")
    out = work / "lm-eval.json"
    subprocess.run([str(PEER), str(ROOT / "benchmarks/evaluate/lm_eval_peer.py"), "--model",
                    str(model_dir), "--requests", *map(str, dumps), "--out", str(out),
                    *(["--limit", str(limit)] if limit else [])],
                   check=True, capture_output=True, cwd=work)
    return json.loads(out.read_text())


def compare(tasks: list[str], work: Path, limit: int | None = None) -> list[dict]:
    """Both harnesses on each task's dump (its first `limit` documents), lm-eval in one process."""
    from lmforge.eval.lm import load

    dumps = [SHARED / "olmes" / task / "rc_0shot" for task in tasks]
    model_dir = make_model(work / "model")
    peer = run_lm_eval(model_dir, dumps, work, limit)["tasks"]
    model = load(model_dir)
    comparisons = []
    for task, dump in zip(tasks, dumps, strict=True):
        ours, theirs = run_lmforge(model, dump, limit), peer[task]
        differences = [abs(a - b)
                       for ra, rb in zip(ours["loglikelihoods"], theirs["loglikelihoods"],
                                         strict=True)
                       for a, b in zip(ra, rb, strict=True)]
        comparisons.append({
            "task": task, "documents": ours["documents"], "peer_documents": theirs["documents"],
            "max_abs_loglikelihood_difference": max(differences),
            "acc": (ours["acc"], theirs["acc"]),
            "acc_norm": (ours["acc_norm"], theirs["acc_norm"])})
    return comparisons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["copa", "openbookqa"])
    args = parser.parse_args()
    print("| task | documents | max abs log-likelihood difference | acc (lmforge / lm-eval) "
          "| acc_norm (lmforge / lm-eval) |")
    print("| --- | ---: | ---: | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="lmforge-eval-parity-") as work:
        for r in compare(args.tasks, Path(work)):
            print(f"| {r['task']} | {r['documents']} | "
                  f"{r['max_abs_loglikelihood_difference']:.2e} | "
                  f"{r['acc'][0]:.3f} / {r['acc'][1]:.3f} | "
                  f"{r['acc_norm'][0]:.3f} / {r['acc_norm'][1]:.3f} |")


if __name__ == "__main__":
    main()

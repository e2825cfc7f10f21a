"""Scaling of the corpus analyses: lmforge (DuckDB, out of core) vs a plain Python reference.

    python benchmarks/stats/bench.py [--mb 12.5] [--factors 1 4 16] [--memory-limit 1GB]
                                     [--threads 2]

The corpus (benchmarks/synthetic.py) is made at 1×, 4× and 16× `--mb` MB of text; at each size
both run the full suite (sizes, domains, schemes, suffixes, dates, length histogram, 1-3-gram
top/least, duplicate texts and URLs, PII, toxic sentences, contamination of the generated
evaluation tasks) in their own process, and wall time and peak RSS (of the process and its
children) are measured from outside. lmforge runs as configured for a machine with `--threads`
cores (DuckDB threads, and as many processes for the per-document Python pass) under the DuckDB
memory limit `--memory-limit`; the plain Python reference is one process. The key counts of
the two must agree. Last line: `ratio: X`, reference time over lmforge time at the largest size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import measure  # noqa: E402
from synthetic import make_corpus  # noqa: E402

LMFORGE_RUN = """
import json, sys, time
from pathlib import Path
from lmforge.stats import corpus_stats
cfg, out = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
summary = corpus_stats(sys.argv[4:], out, cfg, tasks_dir=sys.argv[3])
summary["seconds"] = time.perf_counter() - start
print(json.dumps(summary))
"""
COMPARED = ("documents", "characters", "whitespace_tokens", "distinct_texts", "distinct_urls",
            "duplicate_text_clusters", "documents_in_duplicate_text_clusters",
            "duplicate_url_clusters", "domains", "pii_email", "pii_phone", "pii_ip",
            "toxic_sentences", "contaminated_cloze_mc_ngram", "contaminated_arith_gen_exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=12.5)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-stats-"))
    cfg = {**config["stats"], "duckdb": {"memory_limit": args.memory_limit,
                                         "threads": args.threads,
                                         "temp_directory": str(work / "duckdb")}}
    rows = []
    try:
        from lmforge import tasks

        tasks.make_tasks(work / "tasks", config["tasks"])
        for factor in args.factors:
            docs = work / f"docs-{factor}"
            corpus = make_corpus(docs, args.mb * factor, shards=4 * factor)
            shards = sorted(map(str, docs.glob("*.jsonl.gz")))
            ours = measure([sys.executable, "-c", LMFORGE_RUN, json.dumps(cfg),
                            str(work / f"out-{factor}"), str(work / "tasks"), *shards],
                           work / "lmforge.log")
            theirs = measure([sys.executable, str(Path(__file__).with_name("reference.py")),
                              json.dumps(cfg), str(work / "tasks"), *shards],
                             work / "reference.log")
            mismatched = [k for k in COMPARED if ours[2].get(k) != theirs[2].get(k)]
            rows.append((factor, corpus, ours, theirs, mismatched))
            print(f"{factor}×: {corpus['megabytes']:.0f} MB, {corpus['documents']} documents: "
                  f"lmforge {ours[0]:.1f} s / {ours[1]:.0f} MB, reference {theirs[0]:.1f} s / "
                  f"{theirs[1]:.0f} MB, counts {'agree' if not mismatched else mismatched}",
                  flush=True)
            shutil.rmtree(docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nlmforge: {args.threads} threads, DuckDB memory limit {args.memory_limit}; "
          "reference: one Python process")
    print("\n| size | MB | documents | lmforge s | lmforge peak MB | reference s "
          "| reference peak MB | reference / lmforge | counts agree |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for factor, corpus, ours, theirs, mismatched in rows:
        print(f"| {factor}× | {corpus['megabytes']:.0f} | {corpus['documents']} | {ours[0]:.1f} "
              f"| {ours[1]:.0f} | {theirs[0]:.1f} | {theirs[1]:.0f} | {theirs[0] / ours[0]:.2f} "
              f"| {'yes' if not mismatched else ', '.join(mismatched)} |")
    print(f"ratio: {rows[-1][3][0] / rows[-1][2][0]:.2f}")


if __name__ == "__main__":
    main()

"""Corpus statistics at scale: lmforge (DuckDB, out of core) vs datatrove 0.10.1's stats blocks.

    python benchmarks/stats/bench.py [--mb 12.5] [--factors 1 4 16] [--workers 2]
                                     [--memory-limit 1GB] [--full-suite]

The corpus (benchmarks/synthetic.py) is made at 1×, 4× and 16× `--mb` MB of text. At each size
both tools compute the statistics they have in common, each in its own process (datatrove in
its venv, `make peers`), with the same parallelism: `--workers` DuckDB threads for lmforge,
`--workers` tasks and worker processes for datatrove. Wall time and peak RSS (of the process
and its children) are measured from outside.

Shared statistics, with the same definitions (compared exactly at every size):
  documents and characters (Python `len`, code points): lmforge's `summary`, datatrove's
    DocStats `length` in the `summary` group;
  median document length: lmforge's `median(length(text))`, from datatrove's exact `histogram`
    group of `length` (the mean of the two middle lengths for an even count, as DuckDB);
  length distribution in log2 buckets: lmforge's `length_histogram`, datatrove's exact
    histogram regrouped into the same buckets, floor(log2(max(length, 1)));
  per-domain documents and characters, and the number of domains: lmforge's `domains` (the
    lower-cased host of the URL), datatrove's `fqdn` group of `length` (tldextract's fully
    qualified host; the same on this corpus's lower-case hosts).
lmforge runs exactly those analyses: the SQL of `lmforge.stats.analyses` (its `length_histogram` and
`domains` queries as they are, and the shared columns of its `summary` query) on the on-disk
table `corpus_stats` parses the shards into. `corpus_stats` itself runs the whole suite and
cannot select analyses; `--full-suite` times it instead (lmforge then does much more work than
datatrove: see below). datatrove runs its smallest block with these numbers, DocStats with the
groups `summary`, `histogram` and `fqdn`, then StatsMerger; DocStats also computes six
character ratios per document (whitespace, digits, upper case, ...) that cannot be turned off.

Not compared, no counterpart with the same definition in datatrove: whitespace tokens
(datatrove counts spaCy words, WordStats), tokenizer tokens (lmforge counts them in its
per-document Python pass, with PII, toxicity and contamination), distinct texts and URLs,
duplicate text and URL clusters, schemes, dates, languages (datatrove's LangStats needs a
fastText model), 1-3-gram counts, PII, toxic sentences, evaluation contamination (datatrove's
WordsContaminationStats counts given words, not task items) and suffixes (datatrove's is the
public suffix, co.uk; lmforge's the last label, uk). datatrove's line, paragraph, sentence,
word and perplexity statistics have no lmforge counterpart.

Last line: `ratio: X`, datatrove's time over lmforge's at the largest size (= lmforge's
throughput over datatrove's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import measure  # noqa: E402
from synthetic import make_corpus  # noqa: E402

PEER = Path(os.environ.get("PEER_PYTHON", ROOT / ".venv-peers/datatrove/bin/python"))

# The shared analyses with lmforge's engine and SQL, as `corpus_stats` runs them: the shards
# parsed once into a table of an on-disk scratch database, each result written as parquet.
LMFORGE_SHARED = """
import json, os, sys
from pathlib import Path
from lmforge.io.duck import connect
from lmforge.stats import analyses as stats
cfg, out, paths = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
out.mkdir(parents=True)
scratch = Path(cfg["duckdb"]["temp_directory"]) / f"stats-{os.getpid()}.duckdb"
scratch.unlink(missing_ok=True)
con = connect(cfg["duckdb"], str(scratch))
stats.docs_view(con, paths, kind="TABLE")
queries = {
    # The columns of lmforge's `summary` query that datatrove also computes.
    "summary": "SELECT count(*) AS documents, coalesce(sum(length(text)), 0) AS characters, "
               "coalesce(median(length(text)), 0) AS median_characters FROM docs",
    "length_histogram": stats.QUERIES["length_histogram"],
    "domains": stats.QUERIES["domains"],
}
for name, query in queries.items():
    con.execute(f"CREATE TABLE {name} AS {query}")
    con.execute(f"COPY {name} TO '{out / name}.parquet' (FORMAT parquet)")
summary = con.table("summary").fetchdf().iloc[0].to_dict()
hist, domains = (con.table(t).fetchdf() for t in ("length_histogram", "domains"))
con.close()
scratch.unlink()
Path(f"{scratch}.wal").unlink(missing_ok=True)

def number(v):
    return int(v) if float(v).is_integer() else float(v)
print(json.dumps({
    **{k: number(v) for k, v in summary.items()},
    "length_histogram": {str(b): int(n) for b, n in zip(hist.log2_chars_bucket, hist.documents)},
    "domains": len(domains),
    "domain_documents": dict(zip(domains.domain, map(int, domains.documents))),
    "domain_characters": dict(zip(domains.domain, map(int, domains.characters))),
}))
"""

# The whole suite, `lmforge.stats.analyses.corpus_stats` as the workflow runs it (`--full-suite`).
LMFORGE_FULL = """
import json, sys
from pathlib import Path
import polars as pl
from lmforge.stats.analyses import corpus_stats
cfg, out = json.loads(sys.argv[1]), Path(sys.argv[2])
summary = corpus_stats(sys.argv[4:], out, cfg, tasks_dir=sys.argv[3])
hist = pl.read_parquet(out / "length_histogram.parquet")
domains = pl.read_parquet(out / "domains.parquet")
print(json.dumps({
    **{k: summary[k] for k in ("documents", "characters", "median_characters")},
    "length_histogram": {str(b): n for b, n in zip(hist["log2_chars_bucket"],
                                                   hist["documents"])},
    "domains": summary["domains"],
    "domain_documents": dict(zip(domains["domain"], domains["documents"])),
    "domain_characters": dict(zip(domains["domain"], domains["characters"])),
}))
"""
COMPARED = ("documents", "characters", "median_characters", "length_histogram", "domains",
            "domain_documents", "domain_characters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=12.5)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2,
                        help="lmforge's DuckDB threads; datatrove's tasks and worker processes")
    parser.add_argument("--memory-limit", default="1GB", help="lmforge's DuckDB memory limit")
    parser.add_argument("--full-suite", action="store_true",
                        help="time lmforge's whole suite (corpus_stats), not only the shared "
                             "analyses")
    args = parser.parse_args()
    if not PEER.exists():
        sys.exit(f"no datatrove venv at {PEER}: run `make peers`")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-stats-"))
    cfg = {**config["stats"], "duckdb": {"memory_limit": args.memory_limit,
                                         "threads": args.workers,
                                         "temp_directory": str(work / "duckdb")}}
    rows = []
    try:
        if args.full_suite:
            from lmforge.eval import generated as tasks

            tasks.make_tasks(work / "tasks", config["tasks"])
        for factor in args.factors:
            docs = work / f"docs-{factor}"
            corpus = make_corpus(docs, args.mb * factor, shards=4 * factor)
            shards = sorted(map(str, docs.glob("*.jsonl.gz")))
            if args.full_suite:
                cmd = [sys.executable, "-c", LMFORGE_FULL, json.dumps(cfg),
                       str(work / f"lmforge-{factor}"), str(work / "tasks"), *shards]
            else:
                cmd = [sys.executable, "-c", LMFORGE_SHARED, json.dumps(cfg),
                       str(work / f"lmforge-{factor}"), *shards]
            ours = measure(cmd, work / "lmforge.log")
            theirs = measure([str(PEER), str(Path(__file__).with_name("datatrove_peer.py")),
                              str(docs), str(work / f"datatrove-{factor}"), str(args.workers)],
                             work / "datatrove.log")
            mismatched = [k for k in COMPARED if ours[2].get(k) != theirs[2].get(k)]
            rows.append((factor, corpus, ours, theirs, mismatched))
            print(f"{factor}×: {corpus['megabytes']:.0f} MB, {corpus['documents']} documents: "
                  f"lmforge {ours[0]:.1f} s / {ours[1]:.0f} MB, datatrove {theirs[0]:.1f} s / "
                  f"{theirs[1]:.0f} MB; documents {ours[2]['documents']} / "
                  f"{theirs[2]['documents']}, characters {ours[2]['characters']} / "
                  f"{theirs[2]['characters']}, counts "
                  f"{'agree' if not mismatched else 'differ: ' + ', '.join(mismatched)}",
                  flush=True)
            shutil.rmtree(docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = ("the whole suite (corpus_stats), far more than datatrove" if args.full_suite
            else "the shared analyses only")
    print(f"\nlmforge: {what}; {args.workers} DuckDB threads, memory limit {args.memory_limit}. "
          f"datatrove 0.10.1: DocStats (summary, histogram, fqdn) + StatsMerger, "
          f"{args.workers} tasks on {args.workers} workers.")
    print("\n| size | MB | documents | lmforge s | lmforge MB/s | lmforge peak MB | datatrove s "
          "| datatrove MB/s | datatrove peak MB | datatrove / lmforge | counts agree |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for factor, corpus, ours, theirs, mismatched in rows:
        mb = corpus["megabytes"]
        print(f"| {factor}× | {mb:.0f} | {corpus['documents']} | {ours[0]:.1f} "
              f"| {mb / ours[0]:.2f} | {ours[1]:.0f} | {theirs[0]:.1f} | {mb / theirs[0]:.2f} "
              f"| {theirs[1]:.0f} | {theirs[0] / ours[0]:.2f} "
              f"| {'yes' if not mismatched else 'no: ' + ', '.join(mismatched)} |")
    print(f"ratio: {rows[-1][3][0] / rows[-1][2][0]:.2f}")


if __name__ == "__main__":
    main()

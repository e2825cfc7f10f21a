"""A plan of the data half's global steps for a crawl of any size, before any work:
`lmforge plan-data --warc-files 90000 --measured scale.json --cores 512`.

The per-step costs come from `make bench-scale` (its `--json` file): CPU-seconds per document
and the peak RSS of one job at the bench's largest size. Per-shard jobs (keys, signatures,
attributes) hold one shard, so their memory above an idle interpreter grows with the documents
of a shard (a WARC file's, `--docs-per-warc`); a bucket job holds its share of the keys, and the one
cluster job the candidate pairs with both ends' signatures (counted from their bytes, growing
with the near duplicates); DuckDB caps both at the config's `memory_limit` and spills past it.
CPU grows with the documents. Wall time on `--cores` is whole waves of equal jobs, each job's
share of the CPU one after another.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmforge.io.duck import job_memory_mb, memory_mb
from lmforge.io.storage import InputError
from lmforge.runner import arg, command

# How the bench's steps map to jobs: per shard, per bucket, or one for the whole corpus.
STEP_SCOPE = {"dedup_keys": "shard", "dedup_bucket": "bucket", "dedup": "shard",
              "minhash": "shard", "minhash_bucket": "bucket", "minhash_clusters": "corpus",
              "dedup_minhash": "shard"}
IDLE_MB = 120  # an lmforge job's interpreter with its imports, before it reads anything
# What the cluster job's tables hold per near duplicate: its pair (two int64), both ends'
# signatures (uint64 × bands × rows each) and the union-find's (node, label, score: 24 bytes).
PAIR_BYTES, UNION_FIND_BYTES = 16, 24


def plan_data(measured: dict, documents: int, shards: int, partitions: int, cores: int,
              memory_limit: str, num_perm: int = 100) -> list[dict]:
    """Per step: jobs, memory per job (MB), CPU-hours and wall hours on `cores`."""
    size = max(measured, key=float)
    bench = measured[size]
    bench_docs = bench["corpus"]["documents"]
    near_duplicates = documents * bench["corpus"]["near_duplicates"] / bench_docs
    bench_jobs = {"shard": bench["corpus"]["shards"], "bucket": bench["corpus"]["shards"],
                  "corpus": 1}
    target_jobs = {"shard": shards, "bucket": partitions, "corpus": 1}
    rows = []
    for step, scope in STEP_SCOPE.items():
        jobs = bench["jobs"][step]
        cpu_per_doc = sum(j["cpu"] for j in jobs) / bench_docs
        growth = (documents / target_jobs[scope]) / (bench_docs / bench_jobs[scope])
        memory = IDLE_MB + max(max(j["rss_mb"] for j in jobs) - IDLE_MB, 0) * growth
        if scope == "corpus":
            per_duplicate = PAIR_BYTES + 2 * 8 * num_perm + UNION_FIND_BYTES
            memory = IDLE_MB + near_duplicates * per_duplicate / 1e6
        if scope in ("bucket", "corpus"):
            memory = min(memory, job_memory_mb(memory_limit))
        cpu_hours = cpu_per_doc * documents / 3600
        n = target_jobs[scope]
        wall = math.ceil(n / cores) * cpu_hours / n
        rows.append({"step": step, "jobs": n, "memory_mb": memory, "cpu_hours": cpu_hours,
                     "wall_hours": wall})
    return rows


def markdown(rows: list[dict], cores: int) -> str:
    lines = [f"| step | jobs | memory per job | CPU-hours | wall on {cores} cores |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['jobs']:,} | {r['memory_mb'] / 1024:.1f} GiB | "
                     f"{r['cpu_hours']:,.0f} | {r['wall_hours']:.1f} h |")
    total = sum(r["cpu_hours"] for r in rows)
    lines.append(f"| all | | | {total:,.0f} | {sum(r['wall_hours'] for r in rows):.1f} h |")
    return "\n".join(lines)


@command("plan-data", arg("--measured", help="bench-scale's --json file"),
         arg("--warc-files", type=int, default=None), arg("--documents", type=int, default=None),
         arg("--docs-per-warc", type=int, default=33_000,
             help="documents a WARC file yields (a Common Crawl snapshot: ~3e9 from 90,000)"),
         arg("--partitions", type=int, default=None,
             help="dedup buckets (default: enough for each bucket job's keys to fit "
                  "--memory-limit)"),
         arg("--memory-limit", default="4GB", help="DuckDB's limit in the bucket jobs"),
         arg("--cores", type=int, default=512), tracked=False)
def plan_data_command(args, job) -> None:
    """The data half's global steps at a crawl's size: jobs, memory per job, CPU and wall
    hours, from the per-document costs bench-scale measured."""
    if (args.warc_files is None) == (args.documents is None):
        raise InputError("give one of --warc-files or --documents")
    try:
        measured = json.loads(Path(args.measured).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{args.measured}: not bench-scale's --json output ({err})") from None
    shards = args.warc_files or max(1, math.ceil(args.documents / args.docs_per_warc))
    documents = args.documents or args.warc_files * args.docs_per_warc
    partitions = args.partitions or recommended_partitions(measured, documents,
                                                           args.memory_limit)
    rows = plan_data(measured, documents, shards, partitions, args.cores, args.memory_limit)
    bench = measured[max(measured, key=float)]["corpus"]
    print(f"{documents:,} documents in {shards:,} shards, {partitions:,} dedup buckets "
          f"(DuckDB memory_limit {args.memory_limit}); near duplicates at the bench's rate, "
          f"{bench['near_duplicates'] / bench['documents']:.1%}")
    print(markdown(rows, args.cores))


def recommended_partitions(measured: dict, documents: int, memory_limit: str) -> int:
    """Buckets enough for one bucket job's keys (the largest bench bucket's memory, scaled) to
    stay within the DuckDB limit, so no bucket job spills."""
    size = max(measured, key=float)
    bench = measured[size]
    per_bucket_docs = bench["corpus"]["documents"] / bench["corpus"]["shards"]
    used = max(j["rss_mb"] for step in ("dedup_bucket", "minhash_bucket")
               for j in bench["jobs"][step]) - IDLE_MB
    per_doc_mb = max(used, 1) / per_bucket_docs
    return max(1, math.ceil(documents * per_doc_mb / memory_mb(memory_limit)))

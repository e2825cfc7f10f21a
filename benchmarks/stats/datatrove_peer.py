"""datatrove's side of the statistics benchmark; runs in the peer venv (`make peers`).

    datatrove_peer.py DOCS_DIR OUT_DIR WORKERS

datatrove 0.10.1's statistics blocks as its docs chain them: JsonlReader → DocStats over every
shard (groups `summary`, `histogram` and `fqdn`, the ones whose numbers lmforge also computes),
then StatsMerger over the per-task files; `WORKERS` tasks and worker processes for each stage.
Prints one JSON line: the merged numbers, in lmforge's terms (see benchmarks/stats/bench.py).
"""

import json
import math
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.stats import STATS_MERGED_NAME, DocStats, StatsMerger
from datatrove.utils.stats import MetricStats

# DocStats' groups that lmforge also computes: the corpus summary, the length distribution
# and the per-domain (fully qualified host) counts. `suffix` is left out: datatrove's is the
# public suffix (co.uk), lmforge's the last label of the host (uk).
GROUPS = ["summary", "histogram", "fqdn"]


def run(docs_dir: str, out: Path, workers: int) -> None:
    shards = sorted(Path(docs_dir).glob("*.jsonl.gz"))
    tasks = min(workers, len(shards))
    for stage in (
        [JsonlReader(docs_dir, glob_pattern="*.jsonl.gz"),
         DocStats(str(out / "stats"), groups_to_compute=GROUPS)],
        [StatsMerger(str(out / "stats"), str(out / "merged"))],
    ):
        LocalPipelineExecutor(stage, tasks=tasks, workers=workers,
                              logging_dir=str(out / "logs" / str(time.monotonic_ns())),
                              skip_completed=False).run()


def merged(out: Path, group: str, stat: str) -> dict[str, MetricStats]:
    data = json.loads((out / "merged" / group / stat / STATS_MERGED_NAME).read_text())
    return {key: MetricStats.from_dict(value) for key, value in data.items()}


def median(histogram: dict[int, int]) -> float:
    """Median of the lengths, the mean of the two middle ones for an even count (DuckDB's
    `median`), from datatrove's exact histogram of lengths."""
    n = sum(histogram.values())
    if not n:
        return 0
    middle, seen, values = ((n - 1) // 2, n // 2), 0, []
    for length in sorted(histogram):
        count = histogram[length]
        values += [length for rank in middle if seen <= rank < seen + count]
        seen += count
    return sum(values) / 2


def summarise(out: Path) -> dict:
    """The shared numbers from the merged files (nothing recounted: only regrouped)."""
    summary = merged(out, "summary", "length")["summary"]
    # Lengths are integers, so the histogram's rounded keys are the exact lengths.
    histogram = {int(float(k)): int(v.total) for k, v in merged(out, "histogram", "length").items()}
    buckets: dict[int, int] = {}
    for length, count in histogram.items():
        bucket = int(math.log2(max(length, 1)))  # lmforge's floor(log2(greatest(length, 1)))
        buckets[bucket] = buckets.get(bucket, 0) + count
    domains = merged(out, "fqdn", "length")
    return {
        "documents": summary.n,
        "characters": int(summary.total),
        "median_characters": median(histogram),
        "length_histogram": {str(b): c for b, c in sorted(buckets.items())},
        "domains": len(domains),
        "domain_documents": {d: s.n for d, s in domains.items()},
        "domain_characters": {d: int(s.total) for d, s in domains.items()},
    }


if __name__ == "__main__":  # datatrove's executor starts worker processes: the guard is needed
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    docs_dir, out_dir, n_workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    start = time.perf_counter()
    run(docs_dir, out_dir, n_workers)
    result = summarise(out_dir)
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))

"""The MinHash cluster job alone at growing numbers of near duplicates, under one DuckDB
memory limit: its peak RSS must stay near the limit whatever the duplicates (DuckDB spills),
and its clusters must be the connected components of the pairs.

    python benchmarks/scale/clusters.py [--duplicates 250000 1000000 4000000]
        [--memory-limit 512MB] [--json results/bench-clusters.json]

Synthetic input, written in its own process: documents in 8 shards with 100-value signatures
(the default 20 bands × 5 rows); candidate pairs join each duplicate to an earlier member of
its cluster (clusters of 2 to 6, some chained through a later member, as band groups chain
them), every pair similar (equal signatures), so every duplicate is found. The job runs as
`lmforge minhash-clusters` runs it, in its own process, measured from outside; last line
`ratio: X`, the largest size's peak RSS over the smallest's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from harness import run  # noqa: E402

SHARDS, WIDTH = 8, 100


def make_input(out: Path, duplicates: int, seed: int = 0) -> dict:
    """Signature dirs and one pair file; the expected number of duplicates and clusters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.data.dedup import UNIT_BITS
    from lmforge.data.minhash import SIGNATURES

    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, size=duplicates)  # enough clusters; cut at `duplicates`
    sizes = sizes[: np.searchsorted(np.cumsum(sizes - 1), duplicates) + 1]
    members = int(sizes.sum())
    # Members in corpus order across the shards: unit = shard << 32 | index.
    order = rng.permutation(members)
    shard = order % SHARDS
    units = (shard.astype(np.int64) << UNIT_BITS) + order // SHARDS
    # Each member after its cluster's first pairs with a random earlier member (chains).
    cluster_of = np.repeat(np.arange(len(sizes)), sizes)
    grouped = units[np.lexsort((units, cluster_of))]  # by cluster, then corpus order
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    position = np.arange(members) - starts
    later = position > 0
    earlier = (rng.random(members) * position).astype(np.int64)
    a, b = grouped[(starts + earlier)[later]], grouped[later]
    for s in range(SHARDS):
        mine = np.sort(units[shard == s])
        folder = out / "signatures" / f"{s:05d}"
        folder.mkdir(parents=True)
        signature = pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(len(mine) * WIDTH, dtype=np.uint64)), WIDTH)
        pq.write_table(pa.table({"unit": mine, "signature": signature}), folder / SIGNATURES)
    pq.write_table(pa.table({"a": a, "b": b}), out / "pairs.parquet")
    return {"documents": members, "pairs": len(a), "clusters": len(sizes),
            "duplicates": members - len(sizes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duplicates", type=int, nargs="+", default=[250_000, 1_000_000,
                                                                       4_000_000])
    parser.add_argument("--memory-limit", default="512MB")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--make", nargs=2, help=argparse.SUPPRESS)  # OUT DUPLICATES (child)
    args = parser.parse_args()
    if args.make:
        print(json.dumps(make_input(Path(args.make[0]), int(args.make[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmforge-clusters-") as tmp:
        for n in args.duplicates:
            work = Path(tmp) / str(n)
            log = Path(tmp) / "log.txt"
            expected = run([sys.executable, __file__, "--make", str(work), str(n)], log)["out"]
            cfg = {"partitions": 1, "paragraphs": {},
                   "minhash": {"ngram": 5, "bands": 20, "rows": 5, "seed": 1,
                               "min_jaccard": 0.5},
                   "duckdb": {"memory_limit": args.memory_limit, "threads": 1,
                              "temp_directory": str(work / "duckdb")}}
            job = run([sys.executable, str(HERE / "job.py"), "minhash_clusters", json.dumps(
                {"pair_paths": [str(work / "pairs.parquet")],
                 "signature_dirs": [str(p) for p in sorted((work / "signatures").iterdir())],
                 "out_path": str(work / "clusters.parquet"), "cfg": cfg})], log, "a")
            found = job["out"]
            if (found["duplicates"], found["clusters"]) != (expected["duplicates"],
                                                           expected["clusters"]):
                sys.exit(f"{n}: found {found}, expected {expected}")
            rows.append({**expected, "rss_mb": job["rss_mb"], "cpu": job["cpu"],
                         "wall": job["wall"], "rounds": found["union_find_rounds"]})
            print(f"{n} near duplicates done", file=sys.stderr)
    print(f"DuckDB memory_limit {args.memory_limit}, threads 1")
    print("| near duplicates | pairs | signatures read (MB) | peak RSS (MB) | CPU s | wall s | "
          "union-find rounds |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['duplicates']:,} | {r['pairs']:,} | {r['documents'] * WIDTH * 8 / 1e6:,.0f} "
              f"| {r['rss_mb']:.0f} | {r['cpu']:.1f} | {r['wall']:.1f} | {r['rounds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"ratio: {rows[-1]['rss_mb'] / rows[0]['rss_mb']:.2f}")


if __name__ == "__main__":
    main()

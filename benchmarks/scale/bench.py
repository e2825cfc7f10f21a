"""The data half's global steps at growing scale, and the peers on the same documents.

    python benchmarks/scale/bench.py [--sizes 25 100 400] [--shard-mb 25]   (or: make bench-scale)

One synthetic corpus with known duplicates (benchmarks/scale/corpus.py) at each size, cut into
shards of about `--shard-mb` MB with `partitions` growing with the shards (one bucket per
shard), so every job's share of the work stays the same as the corpus grows. Every job of
lmforge's sharded dedup runs as the workflow runs it, one process each, one after another:
per step, the jobs, the largest peak RSS of one job, and the CPU-seconds per document. The
duplicates found must equal the ones the generator counted (exact texts, URLs, paragraphs;
near duplicates: every injected copy).

Peers, one core each, on the same shards:
- datatrove 0.10.1's MinHash, all four stages (signatures, band buckets, clusters, the filter
  that writes the kept documents), against lmforge's four MinHash steps (signatures with band
  digests, band buckets, clusters, the attribute files). Same shingles (word 5-grams), same
  LSH shape (20 bands × 5 rows) and decision rule: documents sharing a band are clustered,
  all but one of each cluster are duplicates (lmforge with `min_jaccard: 0`). Shingle text
  and hashing differ (datatrove: its normalisation, spaCy words and xxhash; lmforge:
  lower-cased words, datasketch's SHA-1 permutations).
- dolma 1.2.1's `dedupe` of paragraphs (Rust, a Bloom filter in one process) against
  lmforge's keys, bucket and attribute jobs, which also do URL and exact-text dedup in the
  same pass (more work on lmforge's side, reported as it is).
Throughput per core is documents over the process's CPU-seconds (user + system).

Last lines: the paragraph ratio against dolma (goal ≥ 0.5), then `ratio: X`, lmforge's MinHash
documents per CPU-second over datatrove's at the largest size (goal ≥ 1).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from harness import run  # noqa: E402

DATATROVE = Path(os.environ.get("DATATROVE_PYTHON", ROOT / ".venv-peers/datatrove/bin/python"))
DOLMA = Path(os.environ.get("DOLMA_BIN", ROOT / ".venv-peers/dolma/bin/dolma"))
DEDUP_STEPS = ("dedup_keys", "dedup_bucket", "dedup")
MINHASH_STEPS = ("minhash", "minhash_bucket", "minhash_clusters", "dedup_minhash")


def lmforge_dedup(docs: list[Path], work: Path, cfg: dict, log: Path) -> dict:
    """Every job of the sharded dedup in the workflow's order: {step: [job results]}."""
    def job(step: str, **kwargs) -> dict:
        return run([sys.executable, str(HERE / "job.py"), step,
                    json.dumps({**kwargs, "cfg": cfg}, default=str)], log, "a")

    shards = range(len(docs))
    keys = [work / "keys" / f"{i:05d}" for i in shards]
    later = [work / "later" / f"bucket-{b:04d}" for b in range(cfg["partitions"])]
    sigs = [work / "minhash" / f"{i:05d}" for i in shards]
    pairs = [work / "pairs" / f"bucket-{b:04d}.parquet" for b in range(cfg["partitions"])]
    attrs = work / "attributes"
    jobs: dict[str, list] = {}
    jobs["dedup_keys"] = [job("dedup_keys", docs_path=docs[i], shard_index=i, out_dir=keys[i])
                          for i in shards]
    jobs["dedup_bucket"] = [job("dedup_bucket", key_dirs=keys, bucket=b, out_dir=later[b])
                            for b in range(cfg["partitions"])]
    jobs["dedup"] = [job("dedup", docs_path=docs[i], shard_index=i, later_dirs=later,
                         outs={m: attrs / m / f"{i:05d}.jsonl.gz"
                               for m in ("dedup_exact", "dedup_url", "dedup_para")})
                     for i in shards]
    jobs["minhash"] = [job("minhash", docs_path=docs[i], shard_index=i, out_dir=sigs[i])
                       for i in shards]
    jobs["minhash_bucket"] = [job("minhash_bucket", signature_dirs=sigs, bucket=b,
                                  out_path=pairs[b]) for b in range(cfg["partitions"])]
    jobs["minhash_clusters"] = [job("minhash_clusters", pair_paths=pairs, signature_dirs=sigs,
                                    out_path=work / "clusters.parquet")]
    jobs["dedup_minhash"] = [job("dedup_minhash", docs_path=docs[i], shard_index=i,
                                 clusters_path=work / "clusters.parquet",
                                 out_path=attrs / "dedup_minhash" / f"{i:05d}.jsonl.gz")
                             for i in shards]
    return jobs


def found(jobs: dict) -> dict:
    per_shard = [j["out"] for j in jobs["dedup"]]
    return {"exact_duplicates": sum(o["dedup_exact.duplicates"] for o in per_shard),
            "url_duplicates": sum(o["dedup_url.duplicates"] for o in per_shard),
            "paragraph_duplicates": sum(o["dedup_para.duplicates"] for o in per_shard),
            "near_duplicates": sum(j["out"]["duplicates"] for j in jobs["dedup_minhash"])}


def dolma_paragraphs(docs_dir: Path, paragraphs: int, work: Path, log: Path) -> dict:
    """dolma's paragraph dedupe over the shards, one process; its duplicate spans counted."""
    config = {
        "documents": [str(docs_dir / "*.jsonl.gz")],
        "dedupe": {"name": "dolma_para", "skip_empty": True,
                   "paragraphs": {"attribute_name": "bff_duplicate_paragraph_spans"}},
        "bloom_filter": {"file": str(work / "dolma.bloom"), "read_only": False,
                         "estimated_doc_count": paragraphs, "desired_false_positive_rate": 1e-6},
        "processes": 1,
        "work_dir": {"input": str(work / "dolma-in"), "output": str(work / "dolma-out")},
    }
    (work / "dolma.yaml").write_text(yaml.safe_dump(config))
    result = run([str(DOLMA), "-c", str(work / "dolma.yaml"), "dedupe"], log, "a")
    import gzip

    spans = 0
    for path in (docs_dir.parent / "attributes" / "dolma_para").glob("*.jsonl.gz"):
        with gzip.open(path, "rt") as handle:
            for line in handle:
                spans += len(json.loads(line)["attributes"].get("bff_duplicate_paragraph_spans",
                                                                []))
    result["out"] = {"paragraph_duplicates": spans}
    return result


def one_size(megabytes: float, shard_mb: float, work: Path, config: dict, log: Path) -> dict:
    shards = max(1, round(megabytes / shard_mb))
    docs_dir = work / "documents"
    # In its own process: a child's peak RSS on Linux counts the image it was forked from,
    # so the bench process must stay small.
    corpus = run([sys.executable, str(HERE / "corpus.py"), str(docs_dir), str(megabytes),
                  str(shards)], log, "a")["out"]
    docs = sorted(docs_dir.glob("shard-*.jsonl.gz"))
    cfg = {**config["curate"]["dedup"], "partitions": shards,
           "duckdb": {**config["curate"]["dedup"]["duckdb"], "threads": 1,
                      "temp_directory": str(work / "duckdb")},
           "minhash": {**config["curate"]["dedup"]["minhash"], "min_jaccard": 0.0}}
    jobs = lmforge_dedup(docs, work / "lmforge", cfg, log)
    datatrove = run([str(DATATROVE), str(ROOT / "benchmarks/curate/datatrove_peer.py"),
                     "minhash", str(docs_dir)], log, "a")
    dolma = dolma_paragraphs(docs_dir, corpus["paragraphs"], work, log)
    shutil.rmtree(work / "lmforge")
    return {"corpus": corpus, "jobs": jobs, "found": found(jobs), "datatrove": datatrove,
            "dolma": dolma}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[25, 100, 400],
                        help="corpus sizes in MB of text")
    parser.add_argument("--shard-mb", type=float, default=25)
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    for peer in (DATATROVE, DOLMA):
        if not peer.exists():
            sys.exit(f"no peer at {peer}: run `make bench-scale` (it builds the peer venvs)")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    results = {}
    for megabytes in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"lmforge-scale-{megabytes:g}-"))
        try:
            results[megabytes] = one_size(megabytes, args.shard_mb, work, config,
                                          Path(tempfile.gettempdir()) / "bench-scale.log")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{megabytes:g} MB done", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    report(results)


def report(results: dict) -> None:
    print("| MB | docs | shards = buckets | step | jobs | peak RSS of a job (MB) | CPU s "
          "| CPU ms/doc |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for megabytes, r in results.items():
        docs = r["corpus"]["documents"]
        for step in DEDUP_STEPS + MINHASH_STEPS:
            jobs = r["jobs"][step]
            cpu = sum(j["cpu"] for j in jobs)
            rss = max(j["rss_mb"] for j in jobs)
            print(f"| {megabytes:g} | {docs} | {r['corpus']['shards']} | {step} | {len(jobs)} "
                  f"| {rss:.0f} | {cpu:.1f} | {1e3 * cpu / docs:.3f} |")
    print()
    print("| MB | duplicates | injected (counted) | lmforge found | dolma found "
          "| datatrove found |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for megabytes, r in results.items():
        for kind in ("exact_duplicates", "url_duplicates", "paragraph_duplicates",
                     "near_duplicates"):
            dolma = r["dolma"]["out"]["paragraph_duplicates"] if kind.startswith("para") else ""
            peer = r["datatrove"]["out"]["near_duplicates"] if kind.startswith("near") else ""
            print(f"| {megabytes:g} | {kind} | {r['corpus'][kind]} | {r['found'][kind]} "
                  f"| {dolma} | {peer} |")
    print()
    print("| MB | lmforge MinHash docs/CPU-s | datatrove MinHash docs/CPU-s | lmforge paragraph "
          "(+URL, exact) docs/CPU-s | dolma paragraph docs/CPU-s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rates = {}
    for megabytes, r in results.items():
        docs = r["corpus"]["documents"]
        ours_mh = docs / sum(j["cpu"] for s in MINHASH_STEPS for j in r["jobs"][s])
        ours_para = docs / sum(j["cpu"] for s in DEDUP_STEPS for j in r["jobs"][s])
        rates[megabytes] = (ours_mh, docs / r["datatrove"]["cpu"], ours_para,
                            docs / r["dolma"]["cpu"])
        print(f"| {megabytes:g} | " + " | ".join(f"{x:.0f}" for x in rates[megabytes]) + " |")
    largest = rates[max(rates)]
    print(f"paragraph ratio (lmforge / dolma docs per CPU-second, goal >= 0.5): "
          f"{largest[2] / largest[3]:.2f}")
    print(f"ratio: {largest[0] / largest[1]:.2f}")


if __name__ == "__main__":
    main()

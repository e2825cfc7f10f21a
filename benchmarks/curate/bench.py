"""Curation throughput, lmforge vs datatrove, on the same generated corpus (one core each).

    python benchmarks/curate/bench.py [--mb 50] [--shards 8]     (or: make bench-curate)

Work, done by both tools on every document: Gopher quality + Gopher repetition + C4 rules
(lmforge's taggers with `words: punctuation`, the setting that agrees with datatrove's spaCy
words; datatrove's three filters applied to every document rather than chained, so both do the
same work), then MinHash near-duplicate detection over all shards. Each tool runs in its own
process (datatrove in its venv); wall time and the process's peak RSS are measured from outside.

MinHash, like with like: 5-gram word shingles, 20 bands × 5 rows, and the same decision rule,
datatrove's: documents sharing a band are joined into clusters and all but the first document
of each cluster are duplicates, nothing more is checked (datatrove has no similarity check).
datatrove keeps its defaults but for the LSH shape (its default is 14 × 8); lmforge runs its
scatter/gather steps in one process with `min_jaccard: 0` (any shared band decides), where its
default 0.5 also requires the estimated Jaccard similarity of the pair (that count is reported
too, outside the timing). What still differs, and is reported: shingles (datatrove maps numbers
to 0, strips diacritics and splits words with spaCy, lmforge lower-cases and splits on non-word
characters); hashing (xxhash64 and datatrove's permutations vs datasketch's SHA-1 and
permutations), so near the LSH threshold different pairs happen to collide.

Last line: `ratio: X`, lmforge's throughput over datatrove's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import measure  # noqa: E402
from synthetic import make_corpus  # noqa: E402

PEER = Path(os.environ.get("PEER_PYTHON", ROOT / ".venv-peers/datatrove/bin/python"))

# lmforge's MinHash with its Jaccard check disabled: any band collision is a duplicate.
BAND_COLLISION = 0.0

LMFORGE_RUN = """
import json, sys, time, yaml
from pathlib import Path
from lmforge.data.minhash import near_duplicates
from lmforge.data.tag import run_tagger
config = yaml.safe_load(Path(sys.argv[2]).read_text())["curate"]
gopher = {**config["gopher"], "words": "punctuation"}
shards = sorted(Path(sys.argv[1]).glob("*.jsonl.gz"))
out = Path(sys.argv[1]) / "lmforge"
start = time.perf_counter()
rejected = 0
for shard in shards:
    counts = run_tagger("gopher", shard, out / f"gopher-{shard.name}", gopher)
    run_tagger("c4", shard, out / f"c4-{shard.name}", config["c4"])
filter_s = time.perf_counter() - start
start = time.perf_counter()
dedup = config["dedup"]
cfg = {**dedup, "minhash": {**dedup["minhash"], "min_jaccard": float(sys.argv[3])},
       "duckdb": {**dedup["duckdb"], "temp_directory": str(out / "duckdb")}}
found = near_duplicates(shards, [out / f"minhash-{s.name}" for s in shards], out / sys.argv[3],
                        cfg)
print(json.dumps({"filter_s": filter_s, "dedup_s": time.perf_counter() - start,
                  "near_duplicates": found["duplicates"]}))
"""


def default_rule(work: Path, shards: list[Path], dedup: dict) -> int:
    """Outside the timing: lmforge's near duplicates with its default Jaccard check."""
    from lmforge.data.minhash import near_duplicates

    cfg = {**dedup, "duckdb": {**dedup["duckdb"], "temp_directory": str(work / "duckdb")}}
    return near_duplicates(shards, [work / f"default-{s.name}" for s in shards],
                           work / "default", cfg)["duplicates"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB of text")
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    if not PEER.exists():
        sys.exit(f"no datatrove venv at {PEER}: run `make peers`")
    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-curate-"))
    try:
        corpus = make_corpus(work / "docs", args.mb, args.shards)
        (work / "docs" / "lmforge").mkdir()
        print(f"corpus: {corpus['documents']} documents, {corpus['megabytes']:.1f} MB of text, "
              f"{args.shards} shards", flush=True)
        config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        ours = measure([sys.executable, "-c", LMFORGE_RUN, str(work / "docs"),
                        str(ROOT / "config" / "config.yaml"), str(BAND_COLLISION)],
                       work / "lmforge.log")
        theirs = measure([str(PEER), str(Path(__file__).with_name("datatrove_peer.py")), "tag",
                          str(work / "docs")], work / "datatrove.log")
        minhash = config["curate"]["dedup"]["minhash"]
        default = default_rule(work / "default", sorted((work / "docs").glob("*.jsonl.gz")),
                               config["curate"]["dedup"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    docs, mb = corpus["documents"], corpus["megabytes"]
    print("| tool | filters s | MinHash s | total s | docs/s | MB/s | peak RSS MB "
          "| near-dups found |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (seconds, rss, out) in (("lmforge", ours), ("datatrove", theirs)):
        print(f"| {name} | {out['filter_s']:.1f} | {out['dedup_s']:.1f} | {seconds:.1f} | "
              f"{docs / seconds:.0f} | {mb / seconds:.2f} | {rss:.0f} | "
              f"{out['near_duplicates']} |")
    print(f"filters only: lmforge {mb / ours[2]['filter_s']:.2f} MB/s, datatrove "
          f"{mb / theirs[2]['filter_s']:.2f} MB/s; MinHash only: lmforge "
          f"{mb / ours[2]['dedup_s']:.2f} MB/s, datatrove {mb / theirs[2]['dedup_s']:.2f} MB/s")
    print(f"MinHash ({minhash['ngram']}-gram shingles, {minhash['bands']} bands × "
          f"{minhash['rows']} rows, all but the first of each cluster of band collisions): "
          f"lmforge {ours[2]['near_duplicates']}, datatrove {theirs[2]['near_duplicates']} "
          f"near-duplicates; lmforge's default rule (estimated Jaccard "
          f">= {minhash['min_jaccard']} as well) {default}.")
    print(f"ratio: {theirs[0] / ours[0]:.2f}")


if __name__ == "__main__":
    main()

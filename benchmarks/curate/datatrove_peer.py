"""datatrove's side of the curation parity check and benchmark; runs in the peer venv.

    datatrove_peer.py decisions DOCS.jsonl.gz... OUT.json
        Gopher quality, Gopher repetition and C4 quality decisions (reason or null) per id.
    datatrove_peer.py tag DOCS_DIR
        The same three filters over every document of every shard (tagging, not chained, so
        both tools do the same work), then MinHash near-dup detection with datatrove's
        signature, buckets and cluster stages (documents sharing a band are duplicates; all
        but one of each cluster is removed); prints one JSON line of timings and counts.
    datatrove_peer.py minhash DOCS_DIR
        MinHash alone, all four stages (signatures per shard, one task per band bucket,
        clusters, then the filter that drops the duplicates and writes the kept documents),
        one worker; prints one JSON line of timings and counts.
"""

import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

FILTERS = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4QualityFilter,
}


def read_docs(path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            yield Document(text=row["text"], id=row["id"], metadata={})


def decide(filters, doc):
    out = {}
    for name, filt in filters.items():
        verdict = filt.filter(Document(text=doc.text, id=doc.id, metadata={}))
        out[name] = None if verdict is True else (verdict[1] if isinstance(verdict, tuple)
                                                  else "rejected")
    return out


def decisions(paths, out_path):
    filters = {name: cls() for name, cls in FILTERS.items()}
    result = {doc.id: decide(filters, doc) for path in paths for doc in read_docs(path)}
    Path(out_path).write_text(json.dumps(result))


def tag(docs_dir):
    shards = sorted(Path(docs_dir).glob("*.jsonl.gz"))
    filters = {name: cls() for name, cls in FILTERS.items()}
    start = time.perf_counter()
    docs = rejected = 0
    for path in shards:
        for doc in read_docs(path):
            docs += 1
            rejected += any(decide(filters, doc).values())
    filter_s = time.perf_counter() - start
    dedup_s, removed = minhash(docs_dir, with_filter=False)
    print(json.dumps({"documents": docs, "rejected": rejected, "filter_s": filter_s,
                      "dedup_s": dedup_s, "near_duplicates": removed}))


def minhash(docs_dir, with_filter: bool) -> tuple[float, int]:
    """Seconds and documents removed by datatrove's MinHash stages over the shards."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    shards = len(list(Path(docs_dir).glob("*.jsonl.gz")))

    def reader():
        return JsonlReader(str(docs_dir), glob_pattern="*.jsonl.gz", text_key="text",
                           id_key="id")

    # lmforge's LSH shape (20 bands × 5 rows, 5-gram shingles; datatrove's default is 14 × 8);
    # the rest is datatrove's default: 64-bit xxhash, its text normalisation and spaCy words.
    config = MinhashConfig(num_buckets=20, hashes_per_bucket=5, n_grams=5)
    with tempfile.TemporaryDirectory() as work:
        stages = [
            ([reader(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=config)],
             shards),
            ([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets",
                                  config=config)], config.num_buckets),
            ([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/ids",
                                  config=config)], 1),
        ]
        if with_filter:
            stages.append(([reader(), MinhashDedupFilter(input_folder=f"{work}/ids"),
                            JsonlWriter(f"{work}/kept")], shards))
        start = time.perf_counter()
        for pipeline, tasks in stages:
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1,
                                  logging_dir=f"{work}/logs/{time.monotonic_ns()}",
                                  skip_completed=False).run()
        seconds = time.perf_counter() - start
        removed = sum(path.stat().st_size // 4 for path in Path(f"{work}/ids").glob("*.remove"))
    return seconds, removed


if __name__ == "__main__":  # datatrove's executor needs the guard (it forks workers)
    if sys.argv[1] == "decisions":
        decisions(sys.argv[2:-1], sys.argv[-1])
    elif sys.argv[1] == "tag":
        tag(sys.argv[2])
    elif sys.argv[1] == "minhash":
        seconds, removed = minhash(sys.argv[2], with_filter=True)
        print(json.dumps({"seconds": seconds, "near_duplicates": removed}))
    else:
        sys.exit(__doc__)

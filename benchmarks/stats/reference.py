"""The same analyses as `lmforge stats`, in plain Python (dicts and Counters, all in memory):
the reference the stats benchmark measures lmforge against, and a cross-check of its counts.

    python reference.py CFG_JSON TASKS_DIR SHARD... > summary.json
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

from lmforge import pii
from lmforge.stats import PII_KINDS, contained_items, task_index
from lmforge.storage import read_jsonl
from lmforge.taggers import tag_toxic_batch


def analyse(paths: list[str], cfg: dict, tasks_dir: str) -> dict:
    n_ctx = cfg["contamination_ngram"]
    grams, items = task_index(tasks_dir, n_ctx)
    short = {len(key) for key in grams if len(key) < n_ctx}
    toxic_cfg = {"sentence_threshold": cfg["toxic_sentence_threshold"], "max_toxic_fraction": 1.0}
    counts = Counter()
    texts, urls, domains, schemes, suffixes, dates, lengths = (Counter() for _ in range(7))
    ngrams = {n: Counter() for n in range(1, cfg["ngrams"]["max_n"] + 1)}
    found_ngram, found_exact = set(), set()
    batch: list[dict] = []

    def score_toxicity():  # batched like lmforge: one model call per 256 documents
        counts["toxic_sentences"] += sum(len(attrs.get("toxic__sentence") or [])
                                         for attrs in tag_toxic_batch(batch, toxic_cfg))
        batch.clear()

    for path in paths:
        for doc in read_jsonl(path):
            batch.append(doc)
            if len(batch) == 256:
                score_toxicity()
            text, url = doc["text"], (doc.get("metadata") or {}).get("url")
            words = text.split()
            counts["documents"] += 1
            counts["characters"] += len(text)
            counts["whitespace_tokens"] += len(words)
            texts[hashlib.md5(text.encode()).hexdigest()] += 1
            lengths[int(math.log2(max(len(text), 1)))] += 1
            dates[(doc.get("created") or "")[:10]] += 1
            if url:
                urls[url] += 1
                parts = urlsplit(url)
                domains[parts.hostname] += 1
                schemes[parts.scheme] += 1
                suffixes[(parts.hostname or "").rsplit(".", 1)[-1]] += 1
            for n, counter in ngrams.items():
                counter.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
            found = pii.find(text)
            for kind in PII_KINDS:
                counts[f"pii_{kind}"] += len(found[kind])
            by_ngram, exact = contained_items(text, grams, items, n_ctx, short)
            found_ngram.update(by_ngram)
            found_exact.update(exact)
    score_toxicity()
    k = cfg["ngrams"]["top_k"]
    summary = dict(counts)
    summary["distinct_texts"] = len(texts)
    summary["distinct_urls"] = len(urls)
    summary["duplicate_text_clusters"] = sum(c > 1 for c in texts.values())
    summary["documents_in_duplicate_text_clusters"] = sum(c for c in texts.values() if c > 1)
    summary["duplicate_url_clusters"] = sum(c > 1 for c in urls.values())
    summary["domains"] = len(domains)
    for task in sorted({task for task, _ in items.values()}):
        summary[f"contaminated_{task}_ngram"] = sum(items[i][0] == task for i in found_ngram)
        summary[f"contaminated_{task}_exact"] = sum(items[i][0] == task for i in found_exact)
    summary["top_ngrams"] = {n: c.most_common(k) for n, c in ngrams.items()}
    summary["least_ngrams"] = {n: sorted(c.items(), key=lambda kv: (kv[1], kv[0]))[:k]
                               for n, c in ngrams.items()}
    return summary


if __name__ == "__main__":
    start = time.perf_counter()
    result = analyse(sys.argv[3:], json.loads(sys.argv[1]), sys.argv[2])
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))

"""A synthetic web corpus of any size for the benchmarks, in Dolma's documents format.

Documents are 4-10 paragraphs drawn from the demo crawl's text (Python's documentation), with
URLs on a few domains, crawl dates over a month, and the phenomena the analyses count: 3%
lightly edited copies, 1% exact copies, 1% re-fetched URLs, 2% with an e-mail address.
Same size and seed, same bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

from lmforge.data import sources
from lmforge.io.storage import write_jsonl_gz

DOMAINS = ["docs.example.com", "blog.example.org", "notes.example.net", "wiki.example.io",
           "forum.example.co.uk", "mirror.example.de"]


def make_corpus(out_dir: Path, megabytes: float, shards: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    pool = [text for _, text in sources.crawl_paragraphs()]
    docs, size = [], 0
    while size < megabytes * 1e6:
        n = len(docs)
        roll = rng.random()
        url = f"https://{DOMAINS[n % len(DOMAINS)]}/page/{n}"
        if docs and roll < 0.03:
            words = rng.choice(docs)["text"].split(" ")
            for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
                words[i] = "edited"
            text = " ".join(words)
        elif docs and roll < 0.04:
            text = rng.choice(docs)["text"]
        else:
            # A heading with numbers of its own: unique n-grams grow with the corpus, as on the web.
            text = f"Note {n} of batch {rng.randrange(10**6)}\n\n" + "\n\n".join(
                rng.sample(pool, rng.randint(4, 10)))
            if roll > 0.98:
                text += f"\n\nContact: user{n}@mail.example.com"
        if docs and 0.04 <= roll < 0.05:
            url = rng.choice(docs)["metadata"]["url"]
        docs.append({"id": f"bench-{n}", "text": text, "source": "bench",
                     "added": None, "created": f"2024-03-{1 + n % 28:02d}T00:00:00.000Z",
                     "metadata": {"url": url}})
        size += len(text.encode("utf-8"))
    for shard in range(shards):
        write_jsonl_gz(Path(out_dir) / f"shard-{shard:04d}.jsonl.gz", docs[shard::shards])
    return {"documents": len(docs), "megabytes": size / 1e6}

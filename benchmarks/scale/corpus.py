"""A synthetic corpus with known duplicates, in Dolma's documents format, for the scale bench.

Original documents are 4–10 paragraphs of words drawn uniformly from 20,000 random letter
strings (letters only: datatrove's normalisation maps digits to 0), each paragraph opening with
a number of its own, so originals share no paragraph and no 5-gram beyond chance. Injected,
each from a random earlier original: 1% exact copies (new URL), 3% near copies (one word in 40
replaced, new URL), 1% re-fetched URLs (new text), and 5% of documents end with one of 50
boilerplate paragraphs. The expected duplicates are
counted from the documents themselves (occurrences beyond the first, which do not depend on
the order the dedup reads them in): exact texts, normalised URLs, non-blank paragraphs, and
near duplicates (every copy, exact or edited, of an original). Same size and seed, same bytes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

VOCABULARY = 20_000


def _paragraph(rng: np.random.Generator, words: np.ndarray, tag: str) -> str:
    n = int(rng.integers(30, 80))
    return tag + " " + " ".join(words[rng.integers(0, VOCABULARY, n)])


def _vocabulary(rng: np.random.Generator) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return np.array(sorted({"".join(rng.choice(letters, int(rng.integers(3, 10))))
                            for _ in range(VOCABULARY * 2)})[:VOCABULARY])


def make_corpus(out_dir: Path, megabytes: float, shards: int, seed: int = 0) -> dict:
    """Shards `shard-NNNN.jsonl.gz` (documents dealt round-robin) and the expected counts."""
    rng = np.random.default_rng(seed)
    words = _vocabulary(rng)
    boilerplate = [f"Boilerplate notice {i}: " + _paragraph(rng, words, "") for i in range(50)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [gzip.open(out_dir / f"shard-{s:04d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1)
             for s in range(shards)]
    originals: list[str] = []
    texts, urls, paragraphs = set(), set(), set()
    counts = dict(documents=0, paragraph_occurrences=0, copies=0)
    size = n = 0
    while size < megabytes * 1e6:
        roll = rng.random()
        url = f"https://site{n % 97}.example/page/{n}"
        if originals and roll < 0.01:
            text = originals[int(rng.integers(len(originals)))]
            counts["copies"] += 1
        elif originals and roll < 0.04:
            tokens = originals[int(rng.integers(len(originals)))].split(" ")
            for i in rng.choice(len(tokens), max(1, len(tokens) // 40), replace=False):
                if "\n" not in tokens[i]:
                    tokens[i] = f"edit{n}"
            text = " ".join(tokens)
            counts["copies"] += 1
        else:
            text = "\n".join(_paragraph(rng, words, f"P{n}.{k}")
                             for k in range(int(rng.integers(4, 11))))
            if roll > 0.95:
                text += "\n" + boilerplate[int(rng.integers(len(boilerplate)))]
            originals.append(text)
        if originals and 0.04 <= roll < 0.05:  # an earlier document's URL fetched again
            m = int(rng.integers(n))
            url = f"https://site{m % 97}.example/page/{m}"
        doc = {"id": f"doc-{n}", "text": text, "source": "scale", "added": None,
               "created": None, "metadata": {"url": url}}
        files[n % shards].write(json.dumps(doc) + "\n")
        texts.add(text)
        urls.add(url.removeprefix("https://"))
        for paragraph in text.split("\n"):
            if paragraph.strip():
                paragraphs.add(paragraph)
                counts["paragraph_occurrences"] += 1
        size += len(text.encode("utf-8"))
        n += 1
    for handle in files:
        handle.close()
    return {"documents": n, "megabytes": size / 1e6, "shards": shards,
            "exact_duplicates": n - len(texts), "url_duplicates": n - len(urls),
            "paragraphs": counts["paragraph_occurrences"],
            "paragraph_duplicates": counts["paragraph_occurrences"] - len(paragraphs),
            "near_duplicates": counts["copies"]}


if __name__ == "__main__":  # corpus.py OUT_DIR MEGABYTES SHARDS: the counts as JSON
    import sys

    print(json.dumps(make_corpus(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))))

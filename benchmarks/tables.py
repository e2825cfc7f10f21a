"""The tabular steps that moved to polars, against the Python they replaced, on the same input.

    python benchmarks/tables.py [--shards 20000] [--documents 200000]

- funnel: the mix's per-shard funnels (one JSON file each, read by both) summed into the
  mix's total: `collections.Counter` updates vs `lmforge.data.mix.funnel_totals`.
- label scores: precision and recall of every curation method and the quality means over
  labelled documents: the loops over (label, attributes) pairs vs the polars document table
  (`lmforge.data.labeleval`), with and without building the table from the records.

Both paths must give the same numbers (checked). Last line: `ratio: X`, the replaced code's
seconds over polars' for the label scores (the larger step).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from lmforge.data import labeleval
from lmforge.data.mix import funnel_totals
from lmforge.io.storage import read_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_table  # noqa: E402

KINDS = ["non_english", "spam", "toxic", "url_duplicate", "exact_duplicate", "near_duplicate",
         "contamination", "toxic_span"]


def counter_totals(paths: list[Path]) -> dict:
    """The replaced funnel sum."""
    total: Counter = Counter()
    for path in paths:
        total.update(read_json(path))
    return dict(sorted(total.items()))


def loop_scores(rows: list[tuple[dict, dict]]) -> dict:
    """The replaced label scoring: one pass per method over (label, attributes) pairs."""
    results = {}
    for method, (attribute, wanted, tolerated, when) in labeleval.METHODS.items():
        found = false_positives = missed = flagged_ok = 0
        for label, attrs in rows:
            flagged = bool(attrs.get(attribute)) == (when == "present")
            kinds = set(label["kinds"])
            found += flagged and bool(kinds & wanted)
            missed += not flagged and bool(kinds & wanted)
            flagged_ok += flagged and bool(kinds & (wanted | tolerated))
            false_positives += flagged and not kinds & (wanted | tolerated)
        results[method] = (found, missed, false_positives)
    scores: dict[str, list[float]] = {}
    for label, attrs in rows:
        if attrs.get("quality__score"):
            for kind in label["kinds"] or ["clean"]:
                scores.setdefault(kind, []).append(attrs["quality__score"][0][2])
    results["quality"] = {k: sum(v) / len(v) for k, v in sorted(scores.items())}
    return results


def labelled_documents(n: int, rng: random.Random) -> list[tuple[dict, dict]]:
    rows = []
    for _ in range(n):
        kinds = rng.sample(KINDS, rng.choice([0, 0, 0, 1, 2]))
        attrs = {attribute: [[0, 1, 1.0]] for attribute, *_ in labeleval.METHODS.values()
                 if rng.random() < 0.15}
        attrs["quality__score"] = [[0, 1, rng.random()]]
        rows.append(({"kinds": kinds, "boilerplate": False, "toxic_sentences": 0,
                      "pii": {}}, attrs))
    return rows


def document_table(rows: list[tuple[dict, dict]]):
    """The per-document table label-eval builds (the columns the method scores read)."""
    import polars as pl

    return pl.DataFrame([{
        "kinds": label["kinds"],
        **{method: bool(attrs.get(attribute)) == (when == "present")
           for method, (attribute, _, _, when) in labeleval.METHODS.items()},
        "quality": attrs["quality__score"][0][2]} for label, attrs in rows],
        schema={"kinds": pl.List(pl.String), **dict.fromkeys(labeleval.METHODS, pl.Boolean),
                "quality": pl.Float64})


def timed(func, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = func(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=20_000)
    parser.add_argument("--documents", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.shards):
            path = Path(tmp) / f"{i}.funnel.json"
            funnel = {f"dropped_documents:{reason}": rng.randrange(100)
                      for reason in rng.sample(KINDS, 5)}
            path.write_text(json.dumps({"documents_in": 1000, "tokens_in": 10**6, **funnel}))
            paths.append(path)
        counter_s, counted = timed(counter_totals, paths)
        polars_s, summed = timed(funnel_totals, paths)
    if counted != summed:
        sys.exit("the funnel totals differ")
    rows = labelled_documents(args.documents, rng)
    loop_s, looped = timed(loop_scores, rows)
    table_s, table = timed(document_table, rows)
    scores_s, framed = timed(labeleval.method_scores, table)
    frame_s = table_s + scores_s
    for method in labeleval.METHODS:
        r = framed[method]
        if looped[method] != (r["found"], r["labelled"] - r["found"], r["false_positives"]):
            sys.exit(f"{method}: the label scores differ")
    means = framed["quality_mean_score"]
    if any(abs(looped["quality"][kind] - mean) > 1e-12 for kind, mean in means.items()):
        sys.exit("the quality means differ")
    print_table([
        {"step": "funnel", "input": f"{args.shards:,} shard funnels",
         "replaced code s": counter_s, "polars s": polars_s, "speed-up": counter_s / polars_s},
        {"step": "label scores", "input": f"{args.documents:,} documents",
         "replaced code s": loop_s, "polars s": frame_s, "speed-up": loop_s / frame_s},
        {"step": "label scores: the expressions alone", "input": "the same table",
         "replaced code s": loop_s, "polars s": scores_s, "speed-up": loop_s / scores_s}])
    print(f"ratio: {loop_s / frame_s:.2f}")


if __name__ == "__main__":
    main()

"""Precision and recall of every filter and dedup method against the demo crawl's labels."""

from __future__ import annotations

from pathlib import Path

from lmforge.io.storage import read_jsonl, write_json, write_text
from lmforge.runner import DOCS, OUT_JSON, OUT_MD, arg, command

# method → (attribute that flags a document, label kinds it should find, other injected kinds
# it may rightly hit, flag when the attribute is present or missing)
METHODS = {
    # Spam made of symbols and keyword lists has no language: "not English" is right.
    "lang": ("lang__en", {"non_english"}, {"spam"}, "missing"),
    # Gopher's rules are English rules (stop words): they reject other languages too, and the
    # abuse threads, made from a few sentence templates, are rightly repetitive.
    "gopher": ("gopher__reject", {"spam"}, {"non_english", "toxic"}, "present"),
    "dedup_url": ("dedup_url__duplicate", {"url_duplicate"}, set(), "present"),
    "dedup_exact": ("dedup_exact__duplicate", {"exact_duplicate"}, set(), "present"),
    # An exact copy is also a near copy: counted as correct but not required.
    "dedup_minhash": ("dedup_minhash__duplicate", {"near_duplicate"}, {"exact_duplicate"},
                      "present"),
    "decontam": ("decontam__overlap", {"contamination"}, set(), "present"),
    # The toxicity model is English-only: German sentences can score high, and those pages
    # are dropped as non-English anyway.
    "toxic": ("toxic__reject", {"toxic"}, {"non_english"}, "present"),
}


PII_KINDS = ("email", "phone", "ip")


def document_table(labels_path, docs_paths: list, attr_dirs: dict[str, list]):
    """One row per document: its labels and what each method decided about it."""
    import polars as pl

    labels = {row["record_id"]: row for row in read_jsonl(labels_path)}
    rows = []
    for shard_index, docs_path in enumerate(docs_paths):
        readers = {name: read_jsonl(paths[shard_index]) for name, paths in attr_dirs.items()}
        for doc in read_jsonl(docs_path):
            attrs = {}
            for reader in readers.values():
                attrs.update(next(reader)["attributes"])
            label = labels[doc["metadata"]["warc_record_id"]]
            quality = attrs.get("quality__score")
            rows.append({
                "kinds": label["kinds"], "boilerplate": label["boilerplate"],
                "toxic_sentences": label.get("toxic_sentences", 0),
                **{method: bool(attrs.get(attribute)) == (when == "present")
                   for method, (attribute, _, _, when) in METHODS.items()},
                **{f"pii_labelled_{kind}": label["pii"].get(kind, 0) for kind in PII_KINDS},
                **{f"pii_found_{kind}": len(attrs.get(f"pii__{kind}") or [])
                   for kind in PII_KINDS},
                "quality": quality[0][2] if quality else None,
                "toxic_spans": len(attrs.get("toxic__sentence") or []),
                "duplicate_paragraphs": len(attrs.get("dedup_para__paragraph") or []),
            })
    schema = {"kinds": pl.List(pl.String), "boilerplate": pl.Boolean,
              "toxic_sentences": pl.Int64, **dict.fromkeys(METHODS, pl.Boolean),
              **{f"pii_{what}_{kind}": pl.Int64 for what in ("labelled", "found")
                 for kind in PII_KINDS},
              "quality": pl.Float64, "toxic_spans": pl.Int64, "duplicate_paragraphs": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def _has_kind(kinds: set[str]):
    import polars as pl

    return pl.col("kinds").list.eval(pl.element().is_in(sorted(kinds))).list.any()


def method_scores(docs) -> dict:
    """Each method's precision and recall against the labels, and the quality classifier's
    mean score per label kind, from the document table."""
    import polars as pl

    results = {}
    for method, (_, wanted, tolerated, _) in METHODS.items():
        flagged, hits, accepted = pl.col(method), _has_kind(wanted), _has_kind(wanted | tolerated)
        r = docs.select(found=(flagged & hits).sum(), missed=(~flagged & hits).sum(),
                        flagged_ok=(flagged & accepted).sum(),
                        false_positives=(flagged & ~accepted).sum()).row(0, named=True)
        results[method] = {
            "labelled": r["found"] + r["missed"], "found": r["found"],
            "false_positives": r["false_positives"],
            "precision": r["flagged_ok"] / max(r["flagged_ok"] + r["false_positives"], 1),
            "recall": r["found"] / max(r["found"] + r["missed"], 1),
        }
    # A clean page has no kinds: its scores go under "clean".
    by_kind = (docs.filter(pl.col("quality").is_not_null())
               .with_columns(pl.when(pl.col("kinds").list.len() == 0)
                             .then(pl.lit(["clean"])).otherwise(pl.col("kinds")).alias("kind"))
               .explode("kind").group_by("kind").agg(pl.col("quality").mean()).sort("kind"))
    results["quality_mean_score"] = dict(zip(by_kind["kind"], by_kind["quality"], strict=True))
    return results


def evaluate_labels(labels_path, docs_paths: list, attr_dirs: dict[str, list]) -> dict:
    """attr_dirs maps an attribute set name to its per-shard files (same order as docs_paths)."""
    import polars as pl

    docs = document_table(labels_path, docs_paths, attr_dirs)
    scores = method_scores(docs)
    results = {method: scores[method] for method in METHODS}
    sums = docs.select(pl.col("^pii_.*$").sum()).row(0, named=True)
    results["pii"] = {what: {kind: sums[f"pii_{what}_{kind}"] for kind in PII_KINDS}
                      for what in ("found", "labelled")}
    results["toxic_spans"] = _toxic_span_eval(docs)
    results["quality_mean_score"] = scores["quality_mean_score"]
    boiler = docs.filter(pl.col("boilerplate"))
    found = boiler.filter(pl.col("duplicate_paragraphs") >= 2).height
    results["dedup_para"] = {
        "labelled": max(boiler.height - 1, 0), "found": found,
        "recall": found / max(boiler.height - 1, 1)}
    return results


def _toxic_span_eval(docs) -> dict:
    """Sentence spans on pages with one injected abusive sentence: that sentence must be the
    one found; any span on an English page without injected abuse is a false positive."""
    import polars as pl

    spans, injected = pl.col("toxic_spans"), pl.col("toxic_sentences")
    on_toxic_span_page = _has_kind({"toxic_span"})
    clean_english = ~_has_kind({"toxic", "non_english"})
    r = docs.select(
        found=pl.when(on_toxic_span_page).then(pl.min_horizontal(spans, injected)).sum(),
        missed=pl.when(on_toxic_span_page).then((injected - spans).clip(0)).sum(),
        false_positives=(pl.when(on_toxic_span_page).then((spans - injected).clip(0))
                         .when(clean_english).then(spans).otherwise(0).sum()),
    ).row(0, named=True)
    found, missed, false_positives = r["found"], r["missed"], r["false_positives"]
    return {"labelled": found + missed, "found": found, "false_positives": false_positives,
            "precision": found / max(found + false_positives, 1),
            "recall": found / max(found + missed, 1)}


def markdown(results: dict) -> str:
    lines = ["| method | finds label | also accepted | labelled | found | false positives "
             "| precision | recall |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for method, r in results.items():
        if method in ("pii", "quality_mean_score"):
            continue
        if method == "dedup_para":
            target, accepted = "boilerplate pages (all but the first; ≥ 2 dup. paragraphs)", ""
        elif method == "toxic_spans":
            target, accepted = "abusive sentences inside kept pages (toxic__sentence)", ""
        else:
            target = ", ".join(sorted(METHODS[method][1]))
            accepted = ", ".join(sorted(METHODS[method][2]))
        precision = f"{r['precision']:.3f}" if "precision" in r else "–"
        lines.append(f"| {method} | {target} | {accepted} | {r['labelled']} | {r['found']} | "
                     f"{r.get('false_positives', '–')} | {precision} | {r['recall']:.3f} |")
    pii = results["pii"]
    lines += ["", "| PII type | labelled | found |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {pii['labelled'][k]} | {pii['found'][k]} |" for k in pii["found"]]
    if results.get("quality_mean_score"):
        lines += ["", "| label kind | mean quality score |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in results["quality_mean_score"].items()]
    return "\n".join(lines) + "\n"


@command("label-eval", arg("--labels"), DOCS, arg("--attributes", nargs="+"), OUT_JSON, OUT_MD,
         job="label_eval", inputs=("labels", "docs", "attributes"),
         outputs=("out_json", "out_md"), artifacts=("out_md",))
def label_eval_command(args, job) -> dict:
    """Curation decisions against the demo crawl's labels."""
    attrs = {}
    for path in args.attributes:
        attrs.setdefault(Path(path).parent.parent.name, []).append(path)
    if any(len(paths) != len(args.docs) for paths in attrs.values()):
        raise ValueError("every attribute set needs one file per documents shard")
    results = evaluate_labels(args.labels, args.docs, attrs)
    write_json(args.out_json, results)
    write_text(args.out_md, "# Curation against the demo crawl's labels\n\n" + markdown(results))
    return {k: v for k, v in results.items() if k != "pii"}

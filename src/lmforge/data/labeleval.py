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


def evaluate_labels(labels_path, docs_paths: list, attr_dirs: dict[str, list]) -> dict:
    """attr_dirs maps an attribute set name to its per-shard files (same order as docs_paths)."""
    labels = {row["record_id"]: row for row in read_jsonl(labels_path)}
    rows = []
    for shard_index, docs_path in enumerate(docs_paths):
        readers = {name: read_jsonl(paths[shard_index]) for name, paths in attr_dirs.items()}
        for doc in read_jsonl(docs_path):
            merged = {}
            for reader in readers.values():
                merged.update(next(reader)["attributes"])
            rows.append((labels[doc["metadata"]["warc_record_id"]], merged))
    results = {}
    for method, (attribute, wanted, tolerated, when) in METHODS.items():
        found = false_positives = missed = flagged_ok = 0
        for label, attrs in rows:
            flagged = bool(attrs.get(attribute)) == (when == "present")
            kinds = set(label["kinds"])
            found += flagged and bool(kinds & wanted)
            missed += not flagged and bool(kinds & wanted)
            flagged_ok += flagged and bool(kinds & (wanted | tolerated))
            false_positives += flagged and not kinds & (wanted | tolerated)
        results[method] = {
            "labelled": found + missed, "found": found, "false_positives": false_positives,
            "precision": flagged_ok / max(flagged_ok + false_positives, 1),
            "recall": found / max(found + missed, 1),
        }
    pii_found = {kind: 0 for kind in ("email", "phone", "ip")}
    pii_labelled = {kind: 0 for kind in ("email", "phone", "ip")}
    for label, attrs in rows:
        for kind in pii_found:
            pii_found[kind] += len(attrs.get(f"pii__{kind}") or [])
            pii_labelled[kind] += label["pii"].get(kind, 0)
    results["pii"] = {"found": pii_found, "labelled": pii_labelled}
    results["toxic_spans"] = _toxic_span_eval(rows)
    scores: dict[str, list[float]] = {}
    for label, attrs in rows:
        if attrs.get("quality__score"):
            for kind in label["kinds"] or ["clean"]:
                scores.setdefault(kind, []).append(attrs["quality__score"][0][2])
    results["quality_mean_score"] = {k: sum(v) / len(v) for k, v in sorted(scores.items())}
    boiler = [(label, attrs) for label, attrs in rows if label["boilerplate"]]
    found = sum(len(attrs.get("dedup_para__paragraph") or []) >= 2 for _, attrs in boiler)
    results["dedup_para"] = {
        "labelled": max(len(boiler) - 1, 0), "found": found,
        "recall": found / max(len(boiler) - 1, 1)}
    return results


def _toxic_span_eval(rows) -> dict:
    """Sentence spans on pages with one injected abusive sentence: that sentence must be the
    one found; any span on an English page without injected abuse is a false positive."""
    found = missed = false_positives = 0
    for label, attrs in rows:
        spans = len(attrs.get("toxic__sentence") or [])
        kinds = set(label["kinds"])
        if "toxic_span" in kinds:
            found += min(spans, label["toxic_sentences"])
            missed += max(label["toxic_sentences"] - spans, 0)
            false_positives += max(spans - label["toxic_sentences"], 0)
        elif not kinds & {"toxic", "non_english"}:
            false_positives += spans
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

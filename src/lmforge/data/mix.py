"""The mixer: documents + attribute files + a mix config → mixed parts, with a drop funnel.

Rules are applied in config order and a dropped document is charged to the first rule that
drops it, so the funnel adds up. PII spans found by the `pii` tagger are masked in the text.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data import pii
from lmforge.io.storage import (
    InputError,
    read_json,
    read_jsonl,
    stable_fraction,
    write_json,
    write_jsonl_gz_parts,
    write_text,
)
from lmforge.runner import CFG, OUT, OUT_JSON, OUT_MD, arg, command
from lmforge.settings import Section


@dataclass(frozen=True)
class ExcludeRule(Section):
    SECTION = "mixes.<mix>.exclude"

    reason: str
    attribute: str  # `<tagger>__<type>`
    when: str = "present"  # present, missing, or below `threshold`
    threshold: float | None = None


@dataclass(frozen=True)
class MixConfig(Section):
    SECTION = "mixes.<mix>"

    exclude: list[ExcludeRule]
    mask_pii: bool
    max_shard_bytes: int
    remove_spans: list[str] = field(default_factory=list)
    sample_weights: dict[str, float] = field(default_factory=dict)


def _aligned(docs_path: Path, attr_paths: list[Path]):
    """Yield (doc, merged attributes), checking that every attribute file follows the docs."""
    readers = [read_jsonl(p) for p in attr_paths]
    for number, doc in enumerate(read_jsonl(docs_path), start=1):
        merged: dict = {}
        for path, reader in zip(attr_paths, readers):
            row = next(reader, None)
            if row is None or row.get("id") != doc["id"]:
                raise InputError(
                    f"{path}: row {number} does not match document {doc['id']!r} of {docs_path}; "
                    "attribute files must list the same documents in the same order"
                )
            merged.update(row.get("attributes") or {})
        yield doc, merged
    for path, reader in zip(attr_paths, readers):
        if next(reader, None) is not None:
            raise InputError(f"{path}: more rows than documents in {docs_path}")


def drop_reason(attributes: dict, rules: list[ExcludeRule | Mapping]) -> str | None:
    """The first rule that drops the document: attribute present, missing, or (`below`) its
    document score under `threshold` (a missing score counts as below)."""
    for rule in map(ExcludeRule.of, rules):
        spans = attributes.get(rule.attribute)
        when = rule.when
        if when == "below":
            if not spans or spans[0][2] < rule.threshold:
                return rule.reason
        elif bool(spans) == (when == "present"):
            return rule.reason
    return None


def edit_spans(attributes: dict, cfg: MixConfig) -> tuple[list[tuple[int, int, str]], int, int]:
    """Spans to delete (`remove_spans` attributes) and PII spans to mask, as replacements."""
    removed = [(int(start), int(end), "") for name in cfg.remove_spans
               for start, end, _ in attributes.get(name) or []]
    masked = []
    if cfg.mask_pii:
        masked = [(int(start), int(end), pii.MASKS[key.split("__", 1)[1]])
                  for key, values in attributes.items()
                  if key.startswith("pii__") and key.split("__", 1)[1] in pii.MASKS
                  for start, end, _ in values]
    return removed + masked, len(removed), len(masked)


def sample_copies(doc: dict, weights: dict[str, float]) -> int:
    """Dolma-style source weights: weight 2.5 keeps a document 2 or 3 times (3 with chance
    0.5), weight 0.3 keeps it once with chance 0.3; chance is a seeded hash of the id."""
    weight = weights.get(doc.get("source"), 1.0)
    whole = int(weight)
    return whole + (stable_fraction(f"sample/{doc['id']}") < weight - whole)


def mix_shard(docs_path, attr_paths, out_dir, funnel_path, cfg: MixConfig | Mapping) -> dict:
    """Mix one documents shard into `out_dir/part-NNNNN.jsonl.gz` (parts of at most
    `max_shard_bytes`); write and return its funnel."""
    cfg = MixConfig.of(cfg)
    funnel: Counter = Counter()

    def kept():
        for doc, attributes in _aligned(Path(docs_path), [Path(p) for p in attr_paths]):
            tokens = len(doc["text"].split())
            funnel["documents_in"] += 1
            funnel["tokens_in"] += tokens
            reason = drop_reason(attributes, cfg.exclude)
            if reason is not None:
                funnel[f"dropped_documents:{reason}"] += 1
                funnel[f"dropped_tokens:{reason}"] += tokens
                continue
            spans, removed, masked = edit_spans(attributes, cfg)
            if spans:
                text = pii.replace_spans(doc["text"], spans)
                funnel["spans_removed"] += removed
                funnel["pii_spans_masked"] += masked
                funnel["characters_removed_or_masked"] += len(doc["text"]) - len(text)
                funnel["tokens_removed_by_spans"] += tokens - len(text.split())
                if not text.strip():
                    funnel["dropped_documents:empty_after_span_removal"] += 1
                    funnel["dropped_tokens:empty_after_span_removal"] += tokens
                    continue
                doc = {**doc, "text": text}
            copies = sample_copies(doc, cfg.sample_weights)
            if copies == 0:
                funnel["dropped_documents:downsampled"] += 1
                funnel["dropped_tokens:downsampled"] += len(doc["text"].split())
                continue
            funnel["upsampled_copies"] += copies - 1
            funnel["upsampled_tokens"] += (copies - 1) * len(doc["text"].split())
            for _ in range(copies):
                funnel["documents_out"] += 1
                funnel["tokens_out"] += len(doc["text"].split())
                yield doc

    parts = write_jsonl_gz_parts(out_dir, kept(), cfg.max_shard_bytes)
    funnel["output_parts"] = len(parts)
    result = dict(sorted(funnel.items()))
    write_json(funnel_path, result)
    return result


def funnel_totals(funnel_paths: list[str | Path]) -> dict[str, int]:
    """The per-shard funnels (one row each, a column per counter; a counter a shard lacks is
    0) summed column by column."""
    import polars as pl

    frame = pl.DataFrame([read_json(path) for path in funnel_paths], infer_schema_length=None)
    return dict(sorted(frame.fill_null(0).sum().row(0, named=True).items()))


def summarize_funnel(funnel_paths: list[str | Path], rules: list[ExcludeRule | Mapping]
                     ) -> tuple[dict, str]:
    """Add the per-shard funnels; return the total and a markdown table in rule order."""
    totals = funnel_totals(funnel_paths)

    def total(key: str) -> int:
        return totals.get(key, 0)

    lines = ["| step | documents | whitespace tokens |", "| --- | ---: | ---: |",
             f"| in | {total('documents_in')} | {total('tokens_in')} |"]
    for rule in map(ExcludeRule.of, rules):
        reason = rule.reason
        lines.append(f"| drop: {reason} | -{total(f'dropped_documents:{reason}')} | "
                     f"-{total(f'dropped_tokens:{reason}')} |")
    for step in ("empty_after_span_removal", "downsampled"):
        if total(f"dropped_documents:{step}"):
            lines.append(f"| drop: {step} | -{total(f'dropped_documents:{step}')} | "
                         f"-{total(f'dropped_tokens:{step}')} |")
    lines.append(f"| spans removed, PII masked (kept documents) | | "
                 f"-{total('tokens_removed_by_spans')} |")
    if total("upsampled_copies"):
        lines.append(f"| upsampled copies | +{total('upsampled_copies')} | "
                     f"+{total('upsampled_tokens')} |")
    lines.append(f"| out | {total('documents_out')} | {total('tokens_out')} |")
    lines.append(f"\nSpans removed: {total('spans_removed')}; PII spans masked: "
                 f"{total('pii_spans_masked')}; output parts: {total('output_parts')}")
    return totals, "\n".join(lines) + "\n"


@command("mix", arg("--docs"), arg("--attributes", nargs="+"), OUT, arg("--funnel"), CFG,
         job=lambda args: f"mix/{Path(args.out).parent.name}/{Path(args.out).name}",
         inputs=("docs", "attributes"), outputs=("out", "funnel"))
def mix_command(args, job) -> dict:
    """One documents shard through the mix's filters, into size-capped parts."""
    funnel = mix_shard(args.docs, args.attributes, args.out, args.funnel, args.cfg)
    logging.getLogger(__name__).info("funnel: %s", funnel)
    return {k.replace(":", "."): v for k, v in funnel.items()}


@command("funnel", arg("--inputs", nargs="+"), CFG, OUT_JSON, OUT_MD,
         job=lambda args: f"funnel/{Path(args.out_md).parent.name}", params=lambda args: None,
         inputs=("inputs",), outputs=("out_json", "out_md"), artifacts=("out_md",))
def funnel_command(args, job) -> dict:
    """The mix's funnel over all its shards: documents kept and removed by each filter."""
    total, table = summarize_funnel(args.inputs, MixConfig.of(args.cfg).exclude)
    write_json(args.out_json, total)
    write_text(args.out_md, table)
    return {k.replace(":", "."): v for k, v in total.items()}

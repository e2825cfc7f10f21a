"""Gopher and C4 decisions of lmforge vs datatrove on the same documents.

    python benchmarks/curate/parity.py [--out-md FILE] [--out-json FILE]

Documents: the demo crawl (made here) and, from ../shared/data (required), the Common Crawl
documents of dolma's fixtures, every WARC file there after extraction, two books cut into
100-line documents, and GSM8K's training questions five to a document. The `punctuation` word
splitter was written against the first four; GSM8K played no part in it, so its row is the
out-of-sample check. datatrove runs in its own venv (PEER_PYTHON, default
.venv-peers/datatrove/bin/python; `make peers` makes it). lmforge's Gopher
decision is checked in both word modes; datatrove's is its quality filter OR its repetition
filter, as FineWeb chains them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

from lmforge.data import democrawl
from lmforge.data.extract import iter_documents
from lmforge.data.taggers.c4 import c4_decisions
from lmforge.data.taggers.gopher import gopher_failures, gopher_signals
from lmforge.eval import generated as tasks
from lmforge.io.storage import read_jsonl, write_jsonl_gz

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
PEER = Path(os.environ.get("PEER_PYTHON", ROOT / ".venv-peers/datatrove/bin/python"))
HELD_OUT = "gsm8k (held out from the word splitter)"
GSM8K_QUESTIONS, QUESTIONS_PER_DOCUMENT = 1000, 5


def corpora(work: Path, config: dict) -> dict[str, list[str]]:
    """Texts by corpus name."""
    tasks.make_tasks(work / "tasks", config["tasks"])
    democrawl.write_demo_crawl(work / "crawl", config["crawl"]["demo"], work / "tasks",
                               config["seed"])
    skips: Counter = Counter()
    out = {"demo crawl": [d["text"] for warc in sorted((work / "crawl").glob("*.warc.gz"))
                          for d in iter_documents(warc, "demo", skips)]}
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is not present: the parity needs its corpora")
    out["dolma fixtures (Common Crawl)"] = [
        row["text"] for path in sorted((SHARED / "dolma").glob("*documents*"))
        + sorted((SHARED / "dolma").glob("multiple_files__*")) for row in read_jsonl(path)]
    out["shared WARC files"] = [d["text"] for warc in sorted((SHARED / "warc").iterdir())
                                for d in iter_documents(warc, "warc", skips)]
    lines = [line for book in sorted((SHARED / "text").glob("*.txt"))
             for line in book.read_text(encoding="utf-8").splitlines()]
    out["books (100-line pieces)"] = ["\n".join(lines[i:i + 100])
                                      for i in range(0, len(lines), 100)]
    questions = [row["question"]
                 for row in read_jsonl(SHARED / "gsm8k" / "train.jsonl")][:GSM8K_QUESTIONS]
    out[HELD_OUT] = ["\n\n".join(questions[i:i + QUESTIONS_PER_DOCUMENT])
                     for i in range(0, len(questions), QUESTIONS_PER_DOCUMENT)]
    return out


def datatrove_decisions(docs_path: Path, out_path: Path, peer: Path = PEER) -> dict:
    if not peer.exists():
        sys.exit(f"no datatrove venv at {peer}: run `make peers`")
    subprocess.run([str(peer), str(Path(__file__).with_name("datatrove_peer.py")), "decisions",
                    str(docs_path), str(out_path)], check=True)
    return json.loads(out_path.read_text())


def compare(config: dict, peer: Path = PEER, per_corpus: int | None = None) -> dict:
    """Both sides' decisions on every corpus (its first `per_corpus` texts)."""
    gopher_cfg, c4_cfg = config["curate"]["gopher"], config["curate"]["c4"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = corpora(work, config)
        docs = [{"id": f"{name}/{i}", "text": text}
                for name, items in texts.items() for i, text in enumerate(items[:per_corpus])]
        write_jsonl_gz(work / "docs.jsonl.gz", docs)
        theirs = datatrove_decisions(work / "docs.jsonl.gz", work / "decisions.json", peer)
    rows = []
    for doc in docs:
        peer = theirs[doc["id"]]
        row = {"id": doc["id"], "corpus": doc["id"].rsplit("/", 1)[0],
               "datatrove_gopher": peer["gopher_quality"] or peer["gopher_repetition"],
               "datatrove_c4": peer["c4"], "c4": c4_decisions(doc["text"], c4_cfg)[1]}
        for mode in ("whitespace", "punctuation"):
            failures = gopher_failures(gopher_signals(doc["text"], mode), gopher_cfg)
            row[f"gopher_{mode}"] = failures
        rows.append(row)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    checks = {
        "gopher (words: punctuation)": lambda r: (bool(r["gopher_punctuation"]),
                                                  bool(r["datatrove_gopher"])),
        "gopher (words: whitespace, default)": lambda r: (bool(r["gopher_whitespace"]),
                                                          bool(r["datatrove_gopher"])),
        "c4": lambda r: (r["c4"] is not None, r["datatrove_c4"] is not None),
    }
    table = {}
    for check, decide in checks.items():
        for corpus in sorted({r["corpus"] for r in rows}) + ["all"]:
            subset = [r for r in rows if corpus in ("all", r["corpus"])]
            decisions = list(map(decide, subset))
            agree = sum(a == b for a, b in decisions)
            # how many the peer drops: agreement on a corpus both keep whole would say little
            table[f"{check} | {corpus}"] = {"documents": len(subset),
                                            "datatrove_drops": sum(b for _, b in decisions),
                                            "agree": agree, "agreement": agree / len(subset)}
    disagreements = {
        check: [{"id": r["id"], "lmforge": r[key] if key != "c4" else r["c4"],
                 "datatrove": r["datatrove_c4" if key == "c4" else "datatrove_gopher"]}
                for r in rows if (lambda a, b: a != b)(*decide(r))]
        for check, decide, key in (
            ("gopher (words: punctuation)", checks["gopher (words: punctuation)"],
             "gopher_punctuation"),
            ("gopher (words: whitespace, default)",
             checks["gopher (words: whitespace, default)"], "gopher_whitespace"),
            ("c4", checks["c4"], "c4"))}
    why = {check: Counter(_reason_pair(d) for d in items).most_common()
           for check, items in disagreements.items()}
    return {"agreement": table, "disagreement_reasons": why, "disagreements": disagreements}


def _reason_pair(d: dict) -> str:
    ours = d["lmforge"] if isinstance(d["lmforge"], str) or d["lmforge"] is None else (
        ",".join(d["lmforge"]) or None)
    return f"lmforge: {ours or 'keep'} / datatrove: {d['datatrove'] or 'keep'}"


def markdown(result: dict) -> str:
    lines = ["| decision | corpus | documents | datatrove drops | agree | agreement |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key, r in result["agreement"].items():
        lines.append(f"| {key} | {r['documents']} | {r['datatrove_drops']} | {r['agree']} | "
                     f"{r['agreement']:.2%} |")
    for check, reasons in result["disagreement_reasons"].items():
        lines += ["", f"Disagreements, {check}:", ""]
        lines += [f"- {count} × {pair}" for pair, count in reasons] or ["- none"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-md")
    parser.add_argument("--out-json")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    result = compare(config)
    text = markdown(result)
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    if args.out_json:
        with gzip.open(args.out_json, "wt") if args.out_json.endswith(".gz") else open(
                args.out_json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()

"""lm-evaluation-harness on an OLMES request dump, offline: the peer of lmforge's evaluation.

Runs inside the lm-eval venv (`make peers`; pinned in requirements-lm-eval.txt), never imports
lmforge. The dump's documents become a local jsonl task (`dataset_path: json`) whose prompts
and continuations are the dump's strings verbatim (`target_delimiter: ""`, the continuations
keep their leading space), scored by lm-eval's `hf` model in fp32 on the CPU.

Several dumps are scored in one `simple_evaluate` call (one model load), each as its own task;
the result maps each dump's task name (its folder's parent, e.g. `copa`) to its scores. Only our
task folder is indexed (`include_defaults=False`): indexing lm-eval's thousands of built-in task
files is start-up, not evaluation, and would count against its time.

    python lm_eval_peer.py --model HF_DIR --requests DUMP_DIR [DUMP_DIR ...] --out result.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def dump_documents(requests_dir: Path, out: Path) -> int:
    """One jsonl row per document of the dump: context, continuations in order, gold."""
    config = json.loads((requests_dir / "config.json").read_text())
    offset = config["task_config"]["metric_kwargs"].get("uncond_docid_offset")
    docs: dict[int, dict] = {}
    with gzip.open(requests_dir / "requests.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if offset is not None and row["doc_id"] >= offset:
                continue
            doc = docs.setdefault(row["doc_id"], {"context": row["request"]["context"],
                                                  "choices": {}, "gold": row["label"]})
            doc["choices"][row["idx"]] = row["request"]["continuation"]
    with open(out, "w", encoding="utf-8") as handle:
        for doc_id in sorted(docs):
            doc = docs[doc_id]
            choices = [doc["choices"][i] for i in sorted(doc["choices"])]
            handle.write(json.dumps({"context": doc["context"], "choices": choices,
                                     "gold": doc["gold"]}) + "\n")
    return len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", required=True, type=Path, nargs="+")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N documents of each dump")
    args = parser.parse_args()
    tasks = [dump.parent.name for dump in args.requests]
    if len(set(tasks)) < len(tasks):  # one task's documents would overwrite another's
        parser.error(f"two dumps of the same task in --requests: {tasks}")
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="lm-eval-peer-") as work:
        work = Path(work)
        task_names, n_docs = {}, {}
        for dump in args.requests:
            task, name = dump.parent.name, "olmes_" + dump.parent.name.replace("-", "_")
            docs = work / f"{name}.jsonl"
            n_docs[task], task_names[task] = dump_documents(dump, docs), name
            (work / f"{name}.yaml").write_text(TASK_YAML.format(name=name, docs=docs))
        start = time.perf_counter()
        task_manager = TaskManager(include_path=str(work), include_defaults=False)
        results = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={args.model},dtype=float32",
            tasks=list(task_names.values()), task_manager=task_manager, device="cpu",
            batch_size=args.batch_size, log_samples=True, limit=args.limit)
        seconds = time.perf_counter() - start
    scores = {}
    for task, name in task_names.items():
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        metrics = results["results"][name]
        scores[task] = {
            "documents": min(n_docs[task], args.limit or n_docs[task]),
            "acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"],
            "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in samples]}
    args.out.write_text(json.dumps({"seconds": seconds, "tasks": scores}))


if __name__ == "__main__":
    main()

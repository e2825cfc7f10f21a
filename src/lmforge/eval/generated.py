"""Evaluation tasks generated from held-out Python documentation.

- cloze_mc: multiple choice; a sentence opening and four endings, one of them the real one
  (scored by log-likelihood, OLMES "rc" style).
- arith_gen: "What is a + b?" answered by greedy generation, scored by exact match.
- reference_docs: the held-out topics' prose as documents, for bits per byte on the language
  reference (the domain the quality classifier, and so the mid-training mix, favours).

Items come from pydoc topics that the demo crawl never uses, so the only contamination in the
corpus is the one the crawl injects on purpose (and labels).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lmforge.data import sources
from lmforge.data.text import normalized_words
from lmforge.io.storage import read_jsonl, write_jsonl_gz
from lmforge.runner import CFG, OUT_DIR, command
from lmforge.settings import Section


@dataclass(frozen=True)
class ClozeTaskConfig(Section):
    SECTION = "tasks.cloze_mc"

    items: int
    choices: int


@dataclass(frozen=True)
class ArithTaskConfig(Section):
    SECTION = "tasks.arith_gen"

    items: int
    max_operand: int


@dataclass(frozen=True)
class TasksConfig(Section):
    SECTION = "tasks"

    seed: int
    cloze_mc: ClozeTaskConfig
    arith_gen: ArithTaskConfig

TASK_NAMES = ("cloze_mc", "arith_gen")


def _crawl_text() -> str:
    return "\n".join(p for _, p in sources.crawl_paragraphs())


# Decontamination's n-gram (curate.decontam.ngram's default): a held-out paragraph sharing one
# with the crawl would make decontamination flag crawl text the demo never labelled.
HELD_OUT_NGRAM = 13


def _ngram_hashes(text: str, n: int = HELD_OUT_NGRAM) -> set[int]:
    words = normalized_words(text)
    return {hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}


def reference_documents() -> list[dict]:
    """One document per held-out topic: its paragraphs that share no sentence and no 13-gram
    with the crawl or the other topics (some pydoc topics repeat each other's text; the
    quality classifier learns from the others)."""
    held, others = sources.split_task_and_crawl_topics()
    paragraphs = sources.topic_paragraphs()
    seen = "\n".join([_crawl_text()] + [p for topic in others for p in paragraphs[topic]])
    seen_grams = _ngram_hashes(seen)
    docs = []
    for topic in held:
        kept = [para for para in paragraphs[topic]
                if not any(len(sent.split()) >= 6 and sent in seen
                           for sent in sources.sentences(para))
                and not _ngram_hashes(para) & seen_grams]
        if kept:
            docs.append({"id": f"reference-{topic}", "text": "\n\n".join(kept),
                         "source": "python-reference"})
    return docs


def cloze_items(n_items: int, n_choices: int, seed: int) -> list[dict]:
    held, _ = sources.split_task_and_crawl_topics()
    paragraphs = sources.topic_paragraphs()
    # Some pydoc topics repeat each other's text: keep only sentences the crawl never shows.
    crawl_text = _crawl_text()
    candidates, seen = [], set()
    for topic in held:
        for para in paragraphs[topic]:
            for sent in sources.sentences(para):
                words = sent.split()
                if (10 <= len(words) <= 30 and sent.endswith(".") and sent not in seen
                        and " ".join(words) not in crawl_text):
                    seen.add(sent)
                    candidates.append(words)
    rng = random.Random(seed)
    rng.shuffle(candidates)
    if len(candidates) < n_items + n_choices:
        raise ValueError(f"only {len(candidates)} cloze sentences available, asked for {n_items}")
    items = []
    endings = [" ".join(w[len(w) // 2 :]) for w in candidates]
    for index in range(n_items):
        words = candidates[index]
        gold = endings[index]
        pool = [e for j, e in enumerate(endings) if j != index and e != gold]
        choices = rng.sample(pool, n_choices - 1)
        gold_index = rng.randrange(n_choices)
        choices.insert(gold_index, gold)
        items.append(
            {
                "id": f"cloze_mc-{index:04d}",
                "context": " ".join(words[: len(words) // 2]),
                "choices": choices,
                "gold": gold_index,
            }
        )
    return items


def arith_question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def arith_items(n_items: int, max_operand: int, seed: int) -> list[dict]:
    pairs = eval_arith_pairs(n_items, max_operand, seed)
    return [
        {"id": f"arith_gen-{i:04d}", "question": arith_question(a, b), "answer": str(a + b)}
        for i, (a, b) in enumerate(pairs)
    ]


def eval_arith_pairs(n_items: int, max_operand: int, seed: int) -> list[tuple[int, int]]:
    """The operand pairs reserved for evaluation (SFT data must avoid them)."""
    everything = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if n_items > len(everything) // 2:
        raise ValueError(
            f"arith_gen.items={n_items} leaves too few pairs for training; raise max_operand"
        )
    return random.Random(seed).sample(everything, n_items)


def make_tasks(out_dir: str | Path, cfg: TasksConfig | Mapping) -> dict[str, int]:
    cfg = TasksConfig.of(cfg)
    out_dir = Path(out_dir)
    counts = {}
    cloze = cloze_items(cfg.cloze_mc.items, cfg.cloze_mc.choices, cfg.seed)
    counts["cloze_mc"] = write_jsonl_gz(out_dir / "cloze_mc.jsonl.gz", cloze)
    arith = arith_items(cfg.arith_gen.items, cfg.arith_gen.max_operand, cfg.seed)
    counts["arith_gen"] = write_jsonl_gz(out_dir / "arith_gen.jsonl.gz", arith)
    counts["reference_docs"] = write_jsonl_gz(out_dir / "reference_docs.jsonl.gz",
                                              reference_documents())
    return counts


def load_task(path: str | Path) -> list[dict]:
    return list(read_jsonl(path))


def item_text(task: str, item: dict) -> str:
    """The text of an item as it would appear on a web page (used for contamination)."""
    if task == "cloze_mc":
        return f"{item['context']} {item['choices'][item['gold']]}"
    if task == "arith_gen":
        return f"Question: {item['question']} Answer: {item['answer']}"
    raise ValueError(f"unknown task {task!r}")


@command("make-tasks", CFG, OUT_DIR, outputs=("out_dir",))
def make_tasks_command(args, job) -> dict:
    """The workflow's generated evaluation tasks."""
    return {f"items.{k}": v for k, v in make_tasks(args.out_dir, args.cfg).items()}

"""Text that ships with Python itself: the raw material of the demo crawl and the eval tasks.

The pydoc topics (the language reference) and the docstrings of standard-library modules are
real English prose present on every CPython install, so the demo needs no download.
"""

from __future__ import annotations

import ast
import pydoc_data.topics
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

from lmforge.data import pii

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WS = re.compile(r"\s+")


def _paragraphs(text: str, min_words: int = 8) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        # Indented blocks are code samples or tables: keep prose only.
        if not lines or lines[0].startswith((" ", "\t", ">>>")):
            continue
        para = _WS.sub(" ", " ".join(lines)).strip()
        if len(para.split()) >= min_words and not set(para) <= set("=-*~ "):
            out.append(para)
    return out


@lru_cache(maxsize=1)
def topic_paragraphs() -> dict[str, list[str]]:
    """Paragraphs of each pydoc topic, in sorted topic order."""
    topics = pydoc_data.topics.topics
    return {name: _paragraphs(topics[name]) for name in sorted(topics)}


@lru_cache(maxsize=1)
def docstring_paragraphs() -> list[str]:
    """Paragraphs of the docstrings (modules, classes, functions) of the standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc:
                out.extend(_paragraphs(doc))
    return out


def split_task_and_crawl_topics(every: int = 5) -> tuple[list[str], list[str]]:
    """Every `every`-th topic is held out for evaluation tasks; the rest feeds the crawl."""
    names = list(topic_paragraphs())
    held = names[::every]
    return held, [n for n in names if n not in set(held)]


def _is_prose(paragraph: str) -> bool:
    words = paragraph.split()
    alpha = sum(any(ch.isalpha() for ch in w) for w in words) / len(words)
    return alpha >= 0.9 and "==" not in paragraph and not pii.contains_pii(paragraph)


@lru_cache(maxsize=1)
def crawl_paragraphs() -> tuple[tuple[str, str], ...]:
    """(origin, paragraph) the demo crawl may use: unique prose, free of PII look-alikes,
    from the non-held-out topics and the docstrings."""
    _, crawl_topics = split_task_and_crawl_topics()
    by_topic = topic_paragraphs()
    candidates = [(t, p) for t in crawl_topics for p in by_topic[t]]
    candidates += [("stdlib", p) for p in docstring_paragraphs()]
    seen, pool = set(), []
    for origin, para in candidates:
        if para not in seen and _is_prose(para):
            seen.add(para)
            pool.append((origin, para))
    return tuple(pool)


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]

"""C4's line and page rules (Raffel et al. 2020)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from lmforge.data.attributes import AttributeStep, Spans, register_tagger
from lmforge.data.text import paragraph_spans
from lmforge.settings import Section


@dataclass(frozen=True)
class C4Config(Section):
    SECTION = "curate.c4"

    min_sentences: int
    min_words_per_line: int
    max_word_length: int

C4_END_PUNCTUATION = (".", "?", "!", '"', "'")


C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
             "use cookies")


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")


_SENTENCE = re.compile(r"[.!?]+(?:\s|$)")


def c4_decisions(text: str, cfg: C4Config | Mapping
                 ) -> tuple[list[tuple[int, int, str]], str | None]:
    """C4's line and page rules (Raffel et al. 2020, as datatrove's C4QualityFilter applies
    them): the lines C4 would delete, with why, and the reason it would drop the whole page."""
    cfg = C4Config.of(cfg)
    removed, sentences = [], 0
    for start, end, raw in paragraph_spans(text):
        line = _CITATION.sub("", raw.strip())
        words = line.split()
        lower = line.lower()
        reason = None
        if any(len(word) > cfg.max_word_length for word in words):
            reason = "too_long_word"
        elif not line.endswith(C4_END_PUNCTUATION) or line.endswith("..."):
            reason = "no_terminal_punctuation"
        elif len(words) < cfg.min_words_per_line:
            reason = "too_few_words"
        elif "lorem ipsum" in lower:
            return removed, "lorem_ipsum"
        elif "javascript" in lower:
            reason = "javascript"
        elif "{" in line:
            return removed, "curly_bracket"
        elif any(phrase in lower for phrase in C4_POLICY):
            reason = "policy"
        if reason:
            removed.append((start, end, reason))
        else:
            sentences += max(1, len(_SENTENCE.findall(line)))
    if sentences < cfg.min_sentences:
        return removed, "too_few_sentences"
    return removed, None


@register_tagger("c4")
class C4Tagger(AttributeStep):
    """`c4__line_<reason>` spans for lines C4 deletes; `c4__reject` (and `c4__fail_<reason>`)
    when C4 drops the page."""

    Config = C4Config

    def tag(self, doc: dict) -> Spans:
        text = doc["text"]
        removed, page_reason = c4_decisions(text, self.cfg)
        spans: Spans = {}
        for start, end, reason in removed:
            spans.setdefault(f"line_{reason}", []).append((start, min(end, len(text)), 1.0))
        if page_reason:
            spans["reject"] = [(0, len(text), 1.0)]
            spans[f"fail_{page_reason}"] = [(0, len(text), 1.0)]
        return spans

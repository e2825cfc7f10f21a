"""How the data stages cut text: Dolma's paragraphs, and the normalised words that MinHash,
decontamination and the contamination analysis compare."""

from __future__ import annotations

import re
from collections.abc import Iterator


def paragraph_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """Dolma's paragraphs: lines split on "\n", each span including its newline. Like dolma,
    the last line's span also counts one newline, so it may end one past the text."""
    offset = 0
    for paragraph in text.split("\n"):
        start = offset
        offset += len(paragraph) + 1
        yield start, offset, paragraph


_NON_WORD = re.compile(r"[^\w\s]")


def normalized_words(text: str) -> list[str]:
    """Lower-cased words without punctuation (FineWeb's normalisation for MinHash)."""
    return _NON_WORD.sub(" ", text.lower()).split()

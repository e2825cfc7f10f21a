"""PII patterns (e-mail, phone, IPv4) as in Dolma's regex PII tagger, with masking."""

from __future__ import annotations

import re

PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "phone": re.compile(r"(?<![\w+])(?:\+1[ -]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
}
MASKS = {"email": "|||EMAIL_ADDRESS|||", "phone": "|||PHONE_NUMBER|||", "ip": "|||IP_ADDRESS|||"}


def find(text: str) -> dict[str, list[tuple[int, int]]]:
    return {kind: [m.span() for m in pattern.finditer(text)] for kind, pattern in PATTERNS.items()}


def contains_pii(text: str) -> bool:
    return any(pattern.search(text) for pattern in PATTERNS.values())


def replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace (start, end, replacement) spans; where spans overlap the first one wins."""
    out, cursor = [], 0
    for start, end, replacement in sorted(spans):
        if start < cursor:
            continue
        out.append(text[cursor:start])
        out.append(replacement)
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


def mask(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace (start, end, kind) spans, which may come from an attribute file, by their mask."""
    return replace_spans(text, [(start, end, MASKS[kind]) for start, end, kind in spans])

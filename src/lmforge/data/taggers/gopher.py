"""Gopher's quality and repetition rules (Rae et al. 2021)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from lmforge.data.attributes import AttributeStep, Spans, register_tagger
from lmforge.settings import Section


@dataclass(frozen=True)
class GopherConfig(Section):
    SECTION = "curate.gopher"

    words: str
    min_words: int
    max_words: int
    min_mean_word_length: float
    max_mean_word_length: float
    max_symbol_word_ratio: float
    max_bullet_lines_ratio: float
    max_ellipsis_lines_ratio: float
    min_alpha_words_ratio: float
    min_stop_words: int
    max_dup_line_fraction: float
    max_dup_para_fraction: float
    max_dup_line_char_fraction: float
    max_dup_para_char_fraction: float
    max_top_ngram_char_fraction: dict[str, float]  # n → limit
    max_dup_ngram_char_fraction: dict[str, float]

STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}


BULLETS = ("•", "●", "○", "▪", "◦", "‣", "⁃", "-", "*", "–")


_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")


# "punctuation" words approximate the spaCy tokens datatrove uses, without spaCy: runs that
# start and end with a letter or digit (URLs, "3.14", "os.path", "-1", ".pkg", "to--" stay
# whole), abbreviations and initials ("e.g.", "Mr.", "J."), ellipses and dash runs, else one
# punctuation mark; then the splits of spaCy's English rules: "does|n't", "it|'s",
# "built|-|in", "I|/|O", "abc|.|Error", "can|not".
_PUNCTUATION_WORD = re.compile(
    r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Mt|Prof|Rev|Gen|Col|Capt|Lt|Inc|Ltd|Co|etc|vs)\."
    r"|(?:[^\W\d_]\.){2,}|\b[^\W\d_]\.(?!\S)|\.\.\.|-{2,}|[-.]?[^\W_](?:\S*[^\W_])?(?:-{2,}(?!\S))?|\S")


_WORD_SPLITS = re.compile(
    r"(?<=[^\W_])(-+|[:<>=/])(?=[^\W\d_])|(?<=[a-z])(\.)(?=[A-Z])"
    r"|(?i:(?<=[^\W_])(n['’]t|['’](?:s|re|ve|ll|m))$)")


def _punctuation_words(text: str) -> list[str]:
    words = []
    for token in _PUNCTUATION_WORD.findall(text):
        if _WORD_SPLITS.search(token):
            words += [part for part in _WORD_SPLITS.split(token) if part]
        elif token.lower() == "cannot":
            words += [token[:3], token[3:]]
        else:
            words.append(token)
    return words


def split_words(text: str, mode: str) -> list[str]:
    """Gopher's words: whitespace-separated (Dolma) or with punctuation split off (datatrove)."""
    if mode == "whitespace":
        return text.split()
    if mode == "punctuation":
        return _punctuation_words(text)
    raise ValueError(f"gopher.words must be 'whitespace' or 'punctuation', not {mode!r}")


def _dup_fraction(chunks: list[str], text_chars: int) -> tuple[float, float]:
    """Fraction of chunks that repeat an earlier one, and of the text's characters in them."""
    seen: set[str] = set()
    dup_count = dup_chars = 0
    for chunk in chunks:
        if chunk in seen:
            dup_count += 1
            dup_chars += len(chunk)
        else:
            seen.add(chunk)
    return dup_count / max(len(chunks), 1), dup_chars / max(text_chars, 1)


def _top_ngram_char_fraction(words: list[str], n: int, text_chars: int) -> float:
    ngrams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not ngrams:
        return 0.0
    top, count = ngrams.most_common(1)[0]
    return count * len(" ".join(top)) / max(text_chars, 1)


def _dup_ngram_char_fraction(words: list[str], n: int, text_chars: int) -> float:
    """Characters of words inside repeated n-grams, each word counted once (Gopher, Table A1)."""
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            covered[i : i + n] = [True] * n
        else:
            seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered) if c) / max(text_chars, 1)


def gopher_signals(text: str, words_mode: str = "whitespace") -> dict[str, float]:
    """Gopher's quality and repetition signals (Rae et al. 2021, Table A1). Character
    fractions are of the whole text; stop words count distinct words of the paper's list."""
    words = split_words(text, words_mode)
    content = [w for w in words if any(ch.isalnum() for ch in w)]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    paragraphs = [p.strip() for p in _PARAGRAPH_SPLIT.split(text) if p.strip()]
    n_words = max(len(words), 1)
    signals = {
        "word_count": float(len(content)),
        "mean_word_length": sum(map(len, content)) / max(len(content), 1),
        "hash_word_ratio": text.count("#") / n_words,
        "ellipsis_word_ratio": (text.count("...") + text.count("…")) / n_words,
        "bullet_lines_ratio": sum(line.startswith(BULLETS) for line in lines) / max(len(lines), 1),
        "ellipsis_lines_ratio": sum(line.endswith(("...", "…")) for line in lines)
        / max(len(lines), 1),
        "alpha_words_ratio": sum(any(ch.isalpha() for ch in w) for w in words) / n_words,
        "stop_words": float(len(STOP_WORDS.intersection(w.lower() for w in words))),
    }
    (signals["dup_line_fraction"], signals["dup_line_char_fraction"]) = _dup_fraction(
        lines, len(text))
    (signals["dup_para_fraction"], signals["dup_para_char_fraction"]) = _dup_fraction(
        paragraphs, len(text))
    for n in (2, 3, 4):
        signals[f"top_{n}gram_char_fraction"] = _top_ngram_char_fraction(words, n, len(text))
    for n in range(5, 11):
        signals[f"dup_{n}gram_char_fraction"] = _dup_ngram_char_fraction(words, n, len(text))
    return signals


def gopher_failures(signals: dict[str, float], cfg: GopherConfig | Mapping) -> list[str]:
    """Names of the Gopher rules a document breaks, under the thresholds in `cfg`."""
    cfg = GopherConfig.of(cfg)
    checks = {
        "word_count": not cfg.min_words <= signals["word_count"] <= cfg.max_words,
        "mean_word_length": not cfg.min_mean_word_length
        <= signals["mean_word_length"]
        <= cfg.max_mean_word_length,
        # "symbol-to-word ratio greater than 0.1 for either the hash symbol or the ellipsis"
        "hash_word_ratio": signals["hash_word_ratio"] > cfg.max_symbol_word_ratio,
        "ellipsis_word_ratio": signals["ellipsis_word_ratio"] > cfg.max_symbol_word_ratio,
        "bullet_lines_ratio": signals["bullet_lines_ratio"] > cfg.max_bullet_lines_ratio,
        "ellipsis_lines_ratio": signals["ellipsis_lines_ratio"] > cfg.max_ellipsis_lines_ratio,
        "alpha_words_ratio": signals["alpha_words_ratio"] < cfg.min_alpha_words_ratio,
        "stop_words": signals["stop_words"] < cfg.min_stop_words,
        "dup_line_fraction": signals["dup_line_fraction"] > cfg.max_dup_line_fraction,
        "dup_para_fraction": signals["dup_para_fraction"] > cfg.max_dup_para_fraction,
        "dup_line_char_fraction": signals["dup_line_char_fraction"]
        > cfg.max_dup_line_char_fraction,
        "dup_para_char_fraction": signals["dup_para_char_fraction"]
        > cfg.max_dup_para_char_fraction,
    }
    for n, limit in cfg.max_top_ngram_char_fraction.items():
        checks[f"top_{n}gram_char_fraction"] = signals[f"top_{n}gram_char_fraction"] > limit
    for n, limit in cfg.max_dup_ngram_char_fraction.items():
        checks[f"dup_{n}gram_char_fraction"] = signals[f"dup_{n}gram_char_fraction"] > limit
    return [name for name, failed in checks.items() if failed]


@register_tagger("gopher")
class GopherTagger(AttributeStep):
    """Gopher quality and repetition signals, the rules each breaks, and one reject flag."""

    Config = GopherConfig

    def tag(self, doc: dict) -> Spans:
        end = len(doc["text"])
        signals = gopher_signals(doc["text"], self.cfg.words)
        spans: Spans = {name: [(0, end, value)] for name, value in signals.items()}
        failures = gopher_failures(signals, self.cfg)
        for name in failures:
            spans[f"fail_{name}"] = [(0, end, 1.0)]
        if failures:
            spans["reject"] = [(0, end, 1.0)]
        return spans

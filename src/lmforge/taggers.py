"""Document taggers, registered by name, each writing one Dolma attribute file per shard.

An attribute row is `{"id", "source", "attributes": {"<tagger>__<name>": [[start, end, score]]}}`
in the same order as the documents file (dolma's contract), so the mixer can zip them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from lmforge import pii
from lmforge.dedup import paragraph_spans
from lmforge.storage import attribute_row, read_jsonl, write_jsonl_gz

Attributes = dict[str, list[list[float]]]
TAGGERS: dict[str, Callable[[dict, dict], Attributes]] = {}


def register(name: str):
    def wrap(fn: Callable[[dict, dict], Attributes]):
        TAGGERS[name] = fn
        return fn

    return wrap


@lru_cache(maxsize=2)
def _language_detector(low_accuracy: bool):
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_all_languages()
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


@register("lang")
def tag_language(doc: dict, cfg: dict) -> Attributes:
    """Lingua (its n-gram models ship in the wheel, no download): `lang__<iso639-1>` with the
    confidence, or `lang__unknown` when the best language is below `min_confidence`."""
    text = doc["text"]
    best = _language_detector(cfg["low_accuracy"]).compute_language_confidence_values(text)[0]
    code = best.language.iso_code_639_1.name.lower()
    if best.value < cfg["min_confidence"]:
        code = "unknown"
    return {f"lang__{code}": [[0, len(text), round(best.value, 6)]]}


@register("pii")
def tag_pii(doc: dict, cfg: dict) -> Attributes:
    return {
        f"pii__{kind}": [[start, end, 1.0] for start, end in spans]
        for kind, spans in pii.find(doc["text"]).items()
        if spans
    }


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


def gopher_failures(signals: dict[str, float], cfg: dict) -> list[str]:
    """Names of the Gopher rules a document breaks, under the thresholds in `cfg`."""
    checks = {
        "word_count": not cfg["min_words"] <= signals["word_count"] <= cfg["max_words"],
        "mean_word_length": not cfg["min_mean_word_length"]
        <= signals["mean_word_length"]
        <= cfg["max_mean_word_length"],
        # "symbol-to-word ratio greater than 0.1 for either the hash symbol or the ellipsis"
        "hash_word_ratio": signals["hash_word_ratio"] > cfg["max_symbol_word_ratio"],
        "ellipsis_word_ratio": signals["ellipsis_word_ratio"] > cfg["max_symbol_word_ratio"],
        "bullet_lines_ratio": signals["bullet_lines_ratio"] > cfg["max_bullet_lines_ratio"],
        "ellipsis_lines_ratio": signals["ellipsis_lines_ratio"] > cfg["max_ellipsis_lines_ratio"],
        "alpha_words_ratio": signals["alpha_words_ratio"] < cfg["min_alpha_words_ratio"],
        "stop_words": signals["stop_words"] < cfg["min_stop_words"],
        "dup_line_fraction": signals["dup_line_fraction"] > cfg["max_dup_line_fraction"],
        "dup_para_fraction": signals["dup_para_fraction"] > cfg["max_dup_para_fraction"],
        "dup_line_char_fraction": signals["dup_line_char_fraction"]
        > cfg["max_dup_line_char_fraction"],
        "dup_para_char_fraction": signals["dup_para_char_fraction"]
        > cfg["max_dup_para_char_fraction"],
    }
    for n, limit in cfg["max_top_ngram_char_fraction"].items():
        checks[f"top_{n}gram_char_fraction"] = signals[f"top_{n}gram_char_fraction"] > limit
    for n, limit in cfg["max_dup_ngram_char_fraction"].items():
        checks[f"dup_{n}gram_char_fraction"] = signals[f"dup_{n}gram_char_fraction"] > limit
    return [name for name, failed in checks.items() if failed]


@register("gopher")
def tag_gopher(doc: dict, cfg: dict) -> Attributes:
    """Gopher quality and repetition signals, the rules each breaks, and one reject flag."""
    text = doc["text"]
    end = len(text)
    signals = gopher_signals(text, cfg["words"])
    attrs = {f"gopher__{name}": [[0, end, round(value, 6)]] for name, value in signals.items()}
    failures = gopher_failures(signals, cfg)
    for name in failures:
        attrs[f"gopher__fail_{name}"] = [[0, end, 1.0]]
    if failures:
        attrs["gopher__reject"] = [[0, end, 1.0]]
    return attrs


C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
             "use cookies")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE = re.compile(r"[.!?]+(?:\s|$)")


def c4_decisions(text: str, cfg: dict) -> tuple[list[tuple[int, int, str]], str | None]:
    """C4's line and page rules (Raffel et al. 2020, as datatrove's C4QualityFilter applies
    them): the lines C4 would delete, with why, and the reason it would drop the whole page."""
    removed, sentences = [], 0
    for start, end, raw in paragraph_spans(text):
        line = _CITATION.sub("", raw.strip())
        words = line.split()
        lower = line.lower()
        reason = None
        if any(len(word) > cfg["max_word_length"] for word in words):
            reason = "too_long_word"
        elif not line.endswith(C4_END_PUNCTUATION) or line.endswith("..."):
            reason = "no_terminal_punctuation"
        elif len(words) < cfg["min_words_per_line"]:
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
    if sentences < cfg["min_sentences"]:
        return removed, "too_few_sentences"
    return removed, None


@register("c4")
def tag_c4(doc: dict, cfg: dict) -> Attributes:
    """`c4__line_<reason>` spans for lines C4 deletes; `c4__reject` (and `c4__fail_<reason>`)
    when C4 drops the page."""
    text = doc["text"]
    removed, page_reason = c4_decisions(text, cfg)
    attrs: Attributes = {}
    for start, end, reason in removed:
        attrs.setdefault(f"c4__line_{reason}", []).append([start, min(end, len(text)), 1.0])
    if page_reason:
        attrs["c4__reject"] = [[0, len(text), 1.0]]
        attrs[f"c4__fail_{page_reason}"] = [[0, len(text), 1.0]]
    return attrs


_SENTENCE_SPAN = re.compile(r"[^\s][^.!?\n]*(?:[.!?]+|$)", re.MULTILINE)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences as (start, end) character spans: runs up to terminal punctuation or a line end."""
    return [m.span() for m in _SENTENCE_SPAN.finditer(text)]


@lru_cache(maxsize=1)
def _toxicity_model():
    # alt-profanity-check: a linear SVM on TF-IDF features trained on ~200k human-labelled
    # toxic comments, shipped in the wheel — the offline counterpart of Dolma's Jigsaw taggers.
    from profanity_check import predict_prob

    return predict_prob


def tag_toxic_batch(docs: list[dict], cfg: dict) -> list[Attributes]:
    """Toxic language per sentence, as Dolma's sentence-level Jigsaw taggers: `toxic__sentence`
    spans (score = model probability) for sentences at or above `sentence_threshold`, the
    share of characters in them as `toxic__fraction`, and `toxic__reject` above
    `max_toxic_fraction`. One model call for the whole batch: per call, scikit-learn's input
    checks cost about 10 ms, far more than scoring one page."""
    spans = [sentence_spans(doc["text"]) for doc in docs]
    sentences = [doc["text"][start:end] for doc, doc_spans in zip(docs, spans)
                 for start, end in doc_spans]
    scores = iter(_toxicity_model()(sentences) if sentences else [])
    out = []
    for doc, doc_spans in zip(docs, spans):
        text = doc["text"]
        toxic = []
        for (start, end), score in zip(doc_spans, scores):
            if score >= cfg["sentence_threshold"]:
                toxic.append([start, end, round(float(score), 6)])
        fraction = sum(end - start for start, end, _ in toxic) / max(len(text), 1)
        attrs: Attributes = {"toxic__fraction": [[0, len(text), round(fraction, 6)]]}
        if toxic:
            attrs["toxic__sentence"] = toxic
        if fraction > cfg["max_toxic_fraction"]:
            attrs["toxic__reject"] = [[0, len(text), 1.0]]
        out.append(attrs)
    return out


@register("toxic")
def tag_toxic(doc: dict, cfg: dict) -> Attributes:
    return tag_toxic_batch([doc], cfg)[0]


# Taggers that score many documents in one call; run_tagger feeds them batches.
BATCHED = {"toxic": tag_toxic_batch}
BATCH_SIZE = 256


def run_tagger(name: str, docs_path: str | Path, out_path: str | Path, cfg: dict) -> dict:
    if name not in TAGGERS:
        raise KeyError(f"unknown tagger {name!r}; registered: {sorted(TAGGERS)}")
    tagger = TAGGERS[name]
    counts: Counter = Counter()

    def tagged(batch: list[dict]):
        scored = BATCHED[name](batch, cfg) if name in BATCHED else [tagger(d, cfg) for d in batch]
        for doc, attrs in zip(batch, scored):
            counts["documents"] += 1
            for key in attrs:
                counts[key] += 1
            yield attribute_row(doc, attrs)

    def rows():
        batch: list[dict] = []
        for doc in read_jsonl(docs_path):
            batch.append(doc)
            if len(batch) == BATCH_SIZE:
                yield from tagged(batch)
                batch = []
        yield from tagged(batch)

    write_jsonl_gz(out_path, rows())
    return dict(sorted(counts.items()))

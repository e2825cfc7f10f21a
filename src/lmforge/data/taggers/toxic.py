"""Toxic language per sentence, as Dolma's sentence-level Jigsaw taggers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lmforge.data.attributes import AttributeStep, Spans, register_tagger
from lmforge.settings import Section


@dataclass(frozen=True)
class ToxicConfig(Section):
    SECTION = "curate.toxic"

    sentence_threshold: float
    max_toxic_fraction: float

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


@register_tagger("toxic")
class ToxicTagger(AttributeStep):
    """`toxic__sentence` spans (score = model probability) for sentences at or above
    `sentence_threshold`, the share of characters in them as `toxic__fraction`, and
    `toxic__reject` above `max_toxic_fraction`."""

    Config = ToxicConfig

    def tag_batch(self, docs: list[dict]) -> list[Spans]:
        # One model call for the whole batch: per call, scikit-learn's input checks cost about
        # 10 ms, far more than scoring one page.
        spans = [sentence_spans(doc["text"]) for doc in docs]
        sentences = [doc["text"][start:end] for doc, doc_spans in zip(docs, spans)
                     for start, end in doc_spans]
        scores = iter(_toxicity_model()(sentences) if sentences else [])
        out = []
        for doc, doc_spans in zip(docs, spans):
            text = doc["text"]
            toxic = [(start, end, float(score))
                     for (start, end), score in zip(doc_spans, scores)
                     if score >= self.cfg.sentence_threshold]
            fraction = sum(end - start for start, end, _ in toxic) / max(len(text), 1)
            found: Spans = {"fraction": [(0, len(text), fraction)], "sentence": toxic}
            if fraction > self.cfg.max_toxic_fraction:
                found["reject"] = [(0, len(text), 1.0)]
            out.append(found)
        return out

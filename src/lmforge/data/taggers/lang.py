"""Language identification: Lingua (its n-gram models ship in the wheel, no download)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from lmforge.data.attributes import AttributeStep, Spans, register_tagger
from lmforge.settings import Section


@dataclass(frozen=True)
class LangConfig(Section):
    SECTION = "curate.lang"

    min_confidence: float
    low_accuracy: bool


@lru_cache(maxsize=2)
def _language_detector(low_accuracy: bool):
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_all_languages()
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


@register_tagger("lang")
class LanguageTagger(AttributeStep):
    """`lang__<iso639-1>` with the confidence, or `lang__unknown` when the best language is
    below `min_confidence`."""

    Config = LangConfig

    def tag(self, doc: dict) -> Spans:
        text = doc["text"]
        detector = _language_detector(self.cfg.low_accuracy)
        best = detector.compute_language_confidence_values(text)[0]
        code = best.language.iso_code_639_1.name.lower()
        if best.value < self.cfg.min_confidence:
            code = "unknown"
        return {code: [(0, len(text), best.value)]}

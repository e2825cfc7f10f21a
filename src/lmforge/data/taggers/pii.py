"""Personal information: e-mail addresses, phone numbers and IP addresses (lmforge.data.pii)."""

from __future__ import annotations

from lmforge.data import pii
from lmforge.data.attributes import AttributeStep, Spans, register_tagger


@register_tagger("pii")
class PiiTagger(AttributeStep):
    """`pii__<kind>` spans of each match."""

    def tag(self, doc: dict) -> Spans:
        return {kind: [(start, end, 1.0) for start, end in spans]
                for kind, spans in pii.find(doc["text"]).items()}

"""The `stats` section: DuckDB's limits, the n-gram counts, the contamination n-gram."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.io.duck import DuckDBConfig
from lmforge.settings import Section


@dataclass(frozen=True)
class NgramsConfig(Section):
    SECTION = "stats.ngrams"

    max_n: int
    top_k: int
    method: str  # exact or approximate


@dataclass(frozen=True)
class StatsConfig(Section):
    SECTION = "stats"

    duckdb: DuckDBConfig
    top_k: int
    ngrams: NgramsConfig
    contamination_ngram: int
    toxic_sentence_threshold: float
    overlap: list[list[str]] = field(default_factory=list)

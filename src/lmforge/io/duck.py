"""DuckDB connections under the configured limits: memory, threads and a spill directory, so a
query over more data than memory runs out of core (statistics, dedup buckets)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lmforge.settings import Section


@dataclass(frozen=True)
class DuckDBConfig(Section):
    SECTION = "duckdb"

    memory_limit: str  # DuckDB spills to temp_directory beyond it
    threads: int
    temp_directory: str


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_list(paths: Iterable) -> str:
    # DDL and COPY cannot take prepared parameters, so file lists are quoted as SQL literals.
    return "[" + ", ".join(sql_string(str(p)) for p in paths) + "]"


def connect(cfg: DuckDBConfig | Mapping, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    cfg = DuckDBConfig.of(cfg)
    Path(cfg.temp_directory).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(database)
    con.execute(f"SET memory_limit = '{cfg.memory_limit}'")
    con.execute(f"SET threads = {int(cfg.threads)}")
    con.execute(f"SET temp_directory = {sql_string(str(cfg.temp_directory))}")
    con.execute("SET preserve_insertion_order = false")
    return con

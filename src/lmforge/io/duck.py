"""DuckDB connections under the configured limits: memory, threads and a spill directory, so a
query over more data than memory runs out of core (statistics, dedup buckets)."""

from __future__ import annotations

import re
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


_UNITS = {"KB": 1e-3, "MB": 1, "GB": 1e3, "TB": 1e6, "KIB": 1.024e-3, "MIB": 1.048576,
          "GIB": 1073.741824, "TIB": 1099511.627776}


def memory_mb(memory_limit: str) -> float:
    """DuckDB's memory_limit setting (e.g. 2GB, 64GiB) in MB."""
    found = re.fullmatch(r"([0-9.]+) ?([KMGT]i?B)", memory_limit.strip())
    if not found:
        raise ValueError(f"not a memory size: {memory_limit!r} (e.g. 2GB or 64GiB)")
    return float(found[1]) * _UNITS[found[2].upper()]


def job_memory_mb(memory_limit: str) -> int:
    """A DuckDB job's memory request (SLURM `mem_mb`): its limit, a quarter more and 1 GB for
    Python and buffers outside DuckDB's accounting."""
    return int(memory_mb(memory_limit) * 1.25) + 1000


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

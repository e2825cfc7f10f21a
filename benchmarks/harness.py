"""Shared by the benchmarks: run a command in its own process and measure it from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], log: Path, mode: str = "w") -> dict:
    """Run a process to the end: wall and CPU seconds (user + system), peak RSS in MB (the
    process or its largest child), and the JSON object it prints last ({} if none); stderr
    goes to `log`, shown if the command fails."""
    start = time.perf_counter()
    with open(log, mode) as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(map(str, cmd[:4]))} failed:\n{log.read_text()[-3000:]}")
    lines = output.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):  # e.g. dolma prints a report, not JSON
        out = {}
    return {"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "out": out}


def measure(cmd: list[str], log: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS in MB and the JSON object the command prints last."""
    result = run(cmd, log)
    return result["wall"], result["rss_mb"], result["out"]


def print_table(rows: list[dict], floats: int = 2) -> None:
    """Rows of one benchmark as a Markdown table (polars' own formatting)."""
    import polars as pl

    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, float_precision=floats,
                   thousands_separator=",", tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=200,
                   tbl_width_chars=400):
        print(pl.DataFrame(rows))

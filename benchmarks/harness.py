"""Shared by the benchmarks: run a command in its own process and measure it from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def measure(cmd: list[str], log: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS in MB (the process or its largest child), and the JSON object
    the command prints last; stderr goes to `log`, shown if the command fails."""
    start = time.perf_counter()
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, json.loads(output.strip().splitlines()[-1])

"""Atomic, deterministic file output and strict JSONL input.

Every artifact is written to a temporary sibling and renamed into place, so a killed job never
leaves a file that Snakemake (or a person) could take for complete. Gzip members carry no
timestamp or file name, so the same content gives the same bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(Exception):
    """Bad input, reported with the file (and line) it came from."""


def _tmp_sibling(path: Path, directory: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make = tempfile.mkdtemp if directory else tempfile.mkstemp
    made = make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if not directory:
        os.close(made[0])
        made = made[1]
    # mkstemp/mkdtemp create private modes; give the artifact the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(made, (0o777 if directory else 0o666) & ~umask)
    return Path(made)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces directory `path` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path, directory=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(fig, path: str | os.PathLike) -> None:
    """A matplotlib figure as PNG, atomically, without the version stamp (byte-stable)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _open_gzip_writer(tmp: Path):
    raw = open(tmp, "wb")
    # mtime=0 and an empty name keep the gzip header identical across runs.
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    return raw, io.TextIOWrapper(gz, encoding="utf-8", newline="\n")


@contextlib.contextmanager
def jsonl_gz_writer(path: str | os.PathLike) -> Iterator[Callable[[dict], None]]:
    """Yield a function writing one row to gzip JSONL; the file appears, atomically, only if
    the block succeeds (several can be open at once, unlike `write_jsonl_gz`'s iterator)."""
    with atomic_path(path) as tmp:
        raw, text = _open_gzip_writer(tmp)
        with raw, text:
            yield lambda row: text.write(
                json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_jsonl_gz(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as gzip JSONL atomically; returns the number of rows."""
    count = 0
    with jsonl_gz_writer(path) as write:
        for row in rows:
            write(row)
            count += 1
    return count


def write_jsonl_gz_parts(out_dir: str | os.PathLike, rows: Iterable[dict],
                         max_part_bytes: int) -> list[int]:
    """Write rows into `part-NNNNN.jsonl.gz` files of at most `max_part_bytes` of JSONL each
    (uncompressed; a part holds at least one row), like dolma's mixer `max_size_in_bytes`.
    The directory appears atomically and holds at least one (possibly empty) part. Returns the
    rows per part."""
    counts: list[int] = []
    with atomic_dir(out_dir) as tmp, contextlib.ExitStack() as open_files:

        def next_part():
            raw, text = _open_gzip_writer(tmp / f"part-{len(counts):05d}.jsonl.gz")
            open_files.enter_context(raw)
            counts.append(0)
            return open_files.enter_context(text)

        text, size = next_part(), 0
        for row in rows:
            line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
            if size and size + len(line.encode("utf-8")) > max_part_bytes:
                text.close()
                text, size = next_part(), 0
            text.write(line)
            size += len(line.encode("utf-8"))
            counts[-1] += 1
        text.close()
    return counts


def document_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Document files named directly, or the `*.jsonl.gz` parts of a named directory."""
    files: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            parts = sorted(path.glob("*.jsonl.gz"))
            if not parts:
                raise InputError(f"{path}: directory holds no *.jsonl.gz document files")
            files += map(str, parts)
        else:
            files.append(str(path))
    return files


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Read (optionally gzipped) JSONL; a malformed line raises InputError naming file and line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{number}: malformed JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{number}: expected a JSON object per line")
                yield row
    except (OSError, EOFError, UnicodeDecodeError) as err:
        if isinstance(err, FileNotFoundError):
            raise InputError(f"{path}: file not found") from None
        raise InputError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read JSON ({err})") from None


def stable_hash(text: str, digest_size: int = 16) -> str:
    """Platform-independent hash (Python's hash() is salted per process)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=digest_size).hexdigest()


def stable_fraction(text: str) -> float:
    """Deterministic number in [0, 1) from a string, for seeded splits."""
    return int(stable_hash(text, 8), 16) / 2**64

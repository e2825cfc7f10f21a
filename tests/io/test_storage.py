import gzip

import pytest

from lmforge.io.storage import (
    InputError,
    atomic_dir,
    atomic_path,
    read_jsonl,
    stable_fraction,
    write_jsonl_gz,
)


def test_atomic_path_leaves_nothing_when_the_writer_dies(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_jsonl_gz_is_byte_identical_across_writes(tmp_path):
    rows = [{"id": str(i), "text": "héllo"} for i in range(100)]
    write_jsonl_gz(tmp_path / "a.jsonl.gz", rows)
    write_jsonl_gz(tmp_path / "b.jsonl.gz", rows)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert list(read_jsonl(tmp_path / "a.jsonl.gz")) == rows


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n{"id": \n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: malformed JSON"):
        list(read_jsonl(path))


@pytest.mark.parametrize("payload", [b"\xff\xfe not utf8\n", None])
def test_unreadable_input_is_a_clear_error(tmp_path, payload):
    path = tmp_path / "x.jsonl.gz"
    if payload is None:  # truncated gzip stream
        path.write_bytes(gzip.compress(b'{"id": "a"}\n' * 1000)[:50])
    else:
        path.write_bytes(gzip.compress(payload))
    with pytest.raises(InputError, match="unreadable"):
        list(read_jsonl(path))


def test_stable_fraction_is_deterministic_and_spread():
    values = [stable_fraction(str(i)) for i in range(2000)]
    assert values == [stable_fraction(str(i)) for i in range(2000)]
    assert 0.45 < sum(v < 0.5 for v in values) / len(values) < 0.55

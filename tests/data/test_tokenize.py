import numpy as np
import pytest

from lmforge.data.tokenize import (
    EOS,
    index_tokens,
    load_tokenizer,
    open_tokens,
    sample_texts,
    tokenize_shard,
    train_tokenizer,
)
from lmforge.io.storage import InputError, read_json, write_jsonl_gz

from conftest import make_docs

TEXTS = [f"Document number {i} talks about the {w} and the {w}s of the garden."
         for i in range(200) for w in ("apple", "tree", "river")]


def _corpus(tmp_path, shards: int = 1) -> list[list[str]]:
    """The texts as `shards` documents files (each a mix shard), in order."""
    docs = make_docs(TEXTS)
    size = -(-len(docs) // shards)
    paths = []
    for i in range(shards):
        write_jsonl_gz(tmp_path / f"docs{i}.jsonl.gz", docs[i * size:(i + 1) * size])
        paths.append([str(tmp_path / f"docs{i}.jsonl.gz")])
    return paths


def _tokenize(shards: list[list[str]], tokenizer, out_dir) -> dict:
    metas = []
    for i, paths in enumerate(shards):
        tokenize_shard(paths, tokenizer, out_dir / "parts" / f"shard-{i:04d}", seed=1,
                       valid_fraction=0.1)
        metas.append(out_dir / "parts" / f"shard-{i:04d}.json")
    return index_tokens(metas, out_dir / "meta.json")


def test_tokenizer_training_and_memmaps_are_deterministic(tmp_path):
    (paths,) = _corpus(tmp_path)
    for run in ("a", "b"):
        train_tokenizer(paths, tmp_path / run / "tok.json", 400, seed=1, valid_fraction=0.1)
        _tokenize([paths], tmp_path / run / "tok.json", tmp_path / run)
    for name in ("tok.json", "parts/shard-0000.train.npy", "parts/shard-0000.valid.npy",
                 "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_memmap_is_olmo_format_with_eos_between_documents(tmp_path):
    (paths,) = _corpus(tmp_path)
    train_tokenizer(paths, tmp_path / "tok.json", 400, seed=1, valid_fraction=0.1)
    meta = _tokenize([paths], tmp_path / "tok.json", tmp_path)
    tok = load_tokenizer(tmp_path / "tok.json")
    eos = tok.token_to_id(EOS)
    train = open_tokens(tmp_path, "train")[:]
    part = tmp_path / "parts" / "shard-0000.train.npy"
    raw = np.memmap(part, dtype=np.uint16, mode="r")  # how OLMo opens it
    assert raw.dtype == np.uint16 and np.array_equal(raw, train)
    assert part.stat().st_size == 2 * meta["splits"]["train"]["tokens"]
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["valid"]["documents"] == len(TEXTS)
    assert 0 < splits["valid"]["documents"] < 0.2 * len(TEXTS)
    assert int((train == eos).sum()) == splits["train"]["documents"] and train[-1] == eos
    first_doc = np.asarray(train[: int(np.argmax(train == eos))]).tolist()
    assert tok.decode(first_doc) in TEXTS


def test_shards_read_as_one_stream_equal_one_file(tmp_path):
    """The same documents in 1, 3 or 7 shard files (one empty): the concatenated stream, and
    so every training instance, is the same."""
    (whole,) = _corpus(tmp_path)
    train_tokenizer(whole, tmp_path / "tok.json", 400, seed=1, valid_fraction=0.1)
    one = _tokenize([whole], tmp_path / "tok.json", tmp_path / "one")
    streams = {}
    for shards in (1, 3, 7):
        parts = _corpus(tmp_path / f"s{shards}", shards) if shards > 1 else [whole]
        if shards == 7:  # an empty mix shard among them
            write_jsonl_gz(tmp_path / "empty.jsonl.gz", [])
            parts.insert(2, [str(tmp_path / "empty.jsonl.gz")])
        meta = _tokenize(parts, tmp_path / "tok.json", tmp_path / f"t{shards}")
        assert meta["splits"]["train"]["tokens"] == one["splits"]["train"]["tokens"]
        stream = open_tokens(tmp_path / f"t{shards}", "train")
        streams[shards] = stream
        assert len(stream) == one["splits"]["train"]["tokens"]
    assert len(read_json(tmp_path / "t7" / "meta.json")["splits"]["train"]["files"]) == 8
    for a, b in ((0, 100), (37, 5000), (len(streams[1]) - 50, len(streams[1]))):
        assert np.array_equal(streams[1][a:b], streams[3][a:b])
        assert np.array_equal(streams[1][a:b], streams[7][a:b])
    assert len(streams[7][len(streams[7]):]) == 0
    with pytest.raises(InputError, match="nowhere/meta.json"):
        open_tokens(tmp_path / "nowhere", "valid")


def test_tokenizer_sample_is_seeded_bounded_and_whole_when_it_fits():
    docs = [{"id": f"d{i}", "text": "x" * (10 + i % 7)} for i in range(500)]
    everything = sample_texts(iter(docs), None, seed=1)
    assert sample_texts(iter(docs), 10**9, seed=1) == everything  # fits: all, in order
    sample = sample_texts(iter(docs), 1000, seed=1)
    assert 1000 - 16 <= sum(map(len, sample)) <= 1000
    assert sample == sample_texts(iter(docs), 1000, seed=1)
    assert sample != sample_texts(iter(docs), 1000, seed=2)
    # A sample of the same documents in another order is the same set.
    assert sorted(sample) == sorted(sample_texts(iter(docs[::-1]), 1000, seed=1))

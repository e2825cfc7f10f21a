import numpy as np

from lmforge.data.tokenize import EOS, load_tokenizer, open_tokens, tokenize_corpus, train_tokenizer
from lmforge.io.storage import write_jsonl_gz

from conftest import make_docs

TEXTS = [f"Document number {i} talks about the {w} and the {w}s of the garden."
         for i in range(200) for w in ("apple", "tree", "river")]


def _corpus(tmp_path):
    write_jsonl_gz(tmp_path / "docs.jsonl.gz", make_docs(TEXTS))
    return [str(tmp_path / "docs.jsonl.gz")]


def test_tokenizer_training_and_memmaps_are_deterministic(tmp_path):
    paths = _corpus(tmp_path)
    for run in ("a", "b"):
        train_tokenizer(paths, tmp_path / run / "tok.json", 400, seed=1, valid_fraction=0.1)
        tokenize_corpus(paths, tmp_path / run / "tok.json", tmp_path / run, seed=1,
                        valid_fraction=0.1)
    for name in ("tok.json", "train.npy", "valid.npy", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_memmap_is_olmo_format_with_eos_between_documents(tmp_path):
    paths = _corpus(tmp_path)
    train_tokenizer(paths, tmp_path / "tok.json", 400, seed=1, valid_fraction=0.1)
    meta = tokenize_corpus(paths, tmp_path / "tok.json", tmp_path, seed=1, valid_fraction=0.1)
    tok = load_tokenizer(tmp_path / "tok.json")
    eos = tok.token_to_id(EOS)
    train = open_tokens(tmp_path / "train.npy", tmp_path / "meta.json")
    raw = np.memmap(tmp_path / "train.npy", dtype=np.uint16, mode="r")  # how OLMo opens it
    assert raw.dtype == np.uint16 and np.array_equal(raw, train)
    assert (tmp_path / "train.npy").stat().st_size == 2 * meta["splits"]["train"]["tokens"]
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["valid"]["documents"] == len(TEXTS)
    assert 0 < splits["valid"]["documents"] < 0.2 * len(TEXTS)
    assert int((train == eos).sum()) == splits["train"]["documents"] and train[-1] == eos
    first_doc = np.asarray(train[: int(np.argmax(train == eos))]).tolist()
    assert tok.decode(first_doc) in TEXTS

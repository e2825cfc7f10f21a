"""Tokenizer training (Hugging Face `tokenizers`, byte-level BPE) and OLMo token memmaps.

The tokenizer trains on a seeded sample of the mix's training split of at most `sample_bytes`
(the whole split, in order, when it is smaller), so its memory is set by the config. Each mix
shard is tokenized by its own job into its own files; `meta.json` lists them in shard order.

The token files follow OLMo's format: one flat array of token ids per file, raw (no header),
uint16 when the vocabulary fits, documents separated by EOS, so OLMo's `MemMapDataset` can read
them with `np.memmap(path, dtype=np.uint16, mode="r")`. `open_tokens` reads a split's files as
one stream, so training instances and their order do not depend on how many files there are.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.io.storage import (
    InputError,
    atomic_path,
    read_json,
    read_jsonl,
    stable_fraction,
    write_json,
    write_jsonl_gz,
)
from lmforge.posttrain.chat import ASSISTANT, SYSTEM, USER, tokenizer_config
from lmforge.runner import DOCS, OUT, SEED, VALID_FRACTION, arg, command

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Chat-format role markers are single tokens; their order keeps the older ids.
SPECIAL_TOKENS = [EOS, PAD, USER, ASSISTANT, SYSTEM]


def is_valid_doc(doc_id: str, seed: int, fraction: float) -> bool:
    """Held-out split by a seeded hash of the id: stable when other documents change."""
    return stable_fraction(f"{seed}/{doc_id}") < fraction


def _texts(paths: list[str], seed: int, fraction: float, want_valid: bool) -> Iterator[dict]:
    for path in paths:
        for doc in read_jsonl(path):
            if is_valid_doc(doc["id"], seed, fraction) == want_valid:
                yield doc


def sample_texts(docs: Iterator[dict], sample_bytes: int | None, seed: int) -> list[str]:
    """The texts of the documents with the smallest seeded hashes of their ids whose UTF-8
    bytes fit in `sample_bytes` (all of them when None or when they fit), in their original
    order. One pass; memory about `sample_bytes`."""
    if sample_bytes is None:
        return [doc["text"] for doc in docs]
    heap: list[tuple[float, int, str, int]] = []  # (−key, position, text, bytes): max-heap
    total = 0
    for position, doc in enumerate(docs):
        size = len(doc["text"].encode("utf-8"))
        heapq.heappush(heap, (-stable_fraction(f"{seed}/tokenizer/{doc['id']}"), position,
                              doc["text"], size))
        total += size
        while total > sample_bytes:
            total -= heapq.heappop(heap)[3]
    return [text for _, _, text, _ in sorted(heap, key=lambda kept: kept[1])]


def train_tokenizer(paths: list[str], out_path: str | Path, vocab_size: int, seed: int,
                    valid_fraction: float, sample_bytes: int | None = None) -> dict:
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = sample_texts(_texts(paths, seed, valid_fraction, want_valid=False), sample_bytes,
                         seed)
    tokenizer.train_from_iterator(texts, trainer)
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp), pretty=False)
    # transformers' files beside it: special tokens and the Tulu chat template.
    write_json(Path(out_path).parent / "tokenizer_config.json", tokenizer_config(EOS, PAD))
    return {"vocab_size": tokenizer.get_vocab_size(), "documents": len(texts),
            "bytes": sum(len(t.encode("utf-8")) for t in texts)}


def adopt_tokenizer(source: str | Path, out_path: str | Path, embedding_rows: int) -> dict:
    """A released model's tokenizer as the workflow's: the token ids must be the ones its
    embeddings were trained on. Special tokens the workflow needs and the tokenizer lacks (the
    chat roles; OLMoE's pad) are added after its vocabulary, into the rows the model pads its
    embedding to (OLMo 2: 100,278 tokens, 100,352 rows), as open-instruct adds them."""
    try:
        tokenizer = Tokenizer.from_file(str(source))
    except Exception as err:  # tokenizers raises a bare Exception for an unreadable file
        raise InputError(f"{source}: not a readable tokenizer.json ({err})") from None
    if tokenizer.token_to_id(EOS) is None:
        raise InputError(f"{source}: has no {EOS} token; lmforge ends every document and "
                         "chat turn with it")
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    tokenizer.add_special_tokens(missing)
    if tokenizer.get_vocab_size() > embedding_rows:
        raise InputError(f"{source}: adding {missing} makes {tokenizer.get_vocab_size()} "
                         f"tokens, more than the model's {embedding_rows} embedding rows")
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp), pretty=False)
    write_json(Path(out_path).parent / "tokenizer_config.json", tokenizer_config(EOS, PAD))
    return {"vocab_size": tokenizer.get_vocab_size(), "added_tokens": missing}


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_memmap(path: str | Path, chunks: Iterator[list[int]], dtype: np.dtype) -> int:
    """Stream token id lists into a flat raw array file; returns the token count."""
    total = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for ids in chunks:
            handle.write(np.asarray(ids, dtype=dtype).tobytes())
            total += len(ids)
    return total


def tokenize_shard(paths: list[str], tokenizer_path: str | Path, out_prefix: str | Path,
                   seed: int, valid_fraction: float, batch_size: int = 256) -> dict:
    """One mix shard's documents as `<prefix>.train.npy` and `<prefix>.valid.npy`, with their
    counts in `<prefix>.json`."""
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = tokenizer.token_to_id(EOS)
    dtype = token_dtype(tokenizer.get_vocab_size())
    prefix = Path(out_prefix)
    meta = {"dtype": dtype.name, "vocab_size": tokenizer.get_vocab_size(), "eos_token_id": eos_id,
            "pad_token_id": tokenizer.token_to_id(PAD), "splits": {}}
    for split in ("train", "valid"):
        docs = {"n": 0}

        def chunks(split=split, docs=docs):
            batch: list[str] = []
            texts = (doc["text"] for doc in _texts(paths, seed, valid_fraction,
                                                    want_valid=split == "valid"))
            for text in [*texts, None]:
                if text is not None:
                    batch.append(text)
                if batch and (text is None or len(batch) == batch_size):
                    for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
                        docs["n"] += 1
                        yield encoding.ids + [eos_id]
                    batch = []

        path = prefix.with_name(f"{prefix.name}.{split}.npy")
        tokens = write_memmap(path, chunks(), dtype)
        meta["splits"][split] = {"documents": docs["n"], "tokens": tokens,
                                 "files": [{"path": path.name, "tokens": tokens}]}
    write_json(prefix.with_name(f"{prefix.name}.json"), meta)
    return meta


def index_tokens(shard_metas: list[str | Path], out_path: str | Path) -> dict:
    """`meta.json` of a mix's token files: every shard's files in shard order, paths relative
    to the meta file, and the totals."""
    out_path = Path(out_path)
    metas = [(Path(p), read_json(p)) for p in shard_metas]
    if not metas:
        raise InputError("no token shards to index")
    first = metas[0][1]
    for path, meta in metas:
        for key in ("dtype", "vocab_size", "eos_token_id"):
            if meta[key] != first[key]:
                raise InputError(f"{path}: {key} {meta[key]} differs from {first[key]} of "
                                 f"{metas[0][0]} (tokenized with another tokenizer?)")
    index = {key: first[key] for key in ("dtype", "vocab_size", "eos_token_id", "pad_token_id")}
    index["splits"] = {}
    for split in ("train", "valid"):
        files = [{"path": os.path.relpath(path.parent / f["path"], out_path.parent),
                  "tokens": f["tokens"]}
                 for path, meta in metas for f in meta["splits"][split]["files"]]
        index["splits"][split] = {
            "documents": sum(meta["splits"][split]["documents"] for _, meta in metas),
            "tokens": sum(f["tokens"] for f in files), "files": files}
    write_json(out_path, index)
    return index


class TokenStream:
    """A split's token files as one array: `len` and slices `[a:b]` across file boundaries,
    so instance i is tokens [i·L, (i+1)·L) of the files' concatenation however many files
    hold them. Each file is a read-only memmap; nothing is loaded until sliced."""

    def __init__(self, paths: list[Path], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        # An empty file (an empty mix shard) cannot be memory-mapped.
        self.files = [np.memmap(p, dtype=self.dtype, mode="r") if p.stat().st_size
                      else np.zeros(0, self.dtype) for p in paths]
        self.offsets = np.cumsum([0] + [len(f) for f in self.files])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("token streams are read in slices")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("token streams are read in contiguous slices")
        pieces = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for index in range(max(first, 0), len(self.files)):
            begin = int(self.offsets[index])
            if begin >= stop:
                break
            pieces.append(self.files[index][max(start - begin, 0):stop - begin])
        return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)


def token_files(tokens_dir: str | Path) -> list[str]:
    """`meta.json` and every token file it lists: what a reader of the mix's tokens reads (the
    lineage follows them to the jobs that wrote each)."""
    tokens_dir = Path(tokens_dir)
    meta = read_json(tokens_dir / "meta.json")
    return [str(tokens_dir / "meta.json")] + [str(tokens_dir / f["path"])
                                              for split in meta["splits"].values()
                                              for f in split["files"]]


def open_tokens(tokens_dir: str | Path, split: str) -> TokenStream:
    """A mix's `train` or `valid` tokens, from its `meta.json`."""
    tokens_dir = Path(tokens_dir)
    try:
        meta = read_json(tokens_dir / "meta.json")
        files = [tokens_dir / f["path"] for f in meta["splits"][split]["files"]]
        return TokenStream(files, np.dtype(meta["dtype"]))
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{tokens_dir}: no readable {split} tokens ({err!r})") from None


log = logging.getLogger(__name__)


@command("train-tokenizer", DOCS, OUT, SEED, arg("--vocab-size", type=int), VALID_FRACTION,
         arg("--sample-bytes", type=int, default=None), job="train_tokenizer",
         params=lambda args: {"vocab_size": args.vocab_size, "seed": args.seed,
                              "valid_fraction": args.valid_fraction,
                              "sample_bytes": args.sample_bytes},
         inputs=("docs",), outputs=("out",))
def train_tokenizer_command(args, job) -> dict:
    """A byte-level BPE tokenizer trained on a sample of the mix's training split."""
    return train_tokenizer(args.docs, args.out, args.vocab_size, args.seed, args.valid_fraction,
                           args.sample_bytes)


@command("tokenize", DOCS, arg("--tokenizer"), arg("--out-prefix"), SEED, VALID_FRACTION,
         job=lambda args: f"tokenize/{Path(args.out_prefix).parent.parent.name}/"
                          f"{Path(args.out_prefix).name}",
         params=lambda args: {"seed": args.seed, "valid_fraction": args.valid_fraction},
         inputs=("docs", "tokenizer"), outputs=("outputs",))
def tokenize_command(args, job) -> dict:
    """One mix shard as OLMo token memmaps, train and valid."""
    prefix = Path(args.out_prefix)
    args.outputs = [str(prefix.with_name(f"{prefix.name}{suffix}"))
                    for suffix in (".train.npy", ".valid.npy", ".json")]
    meta = tokenize_shard(args.docs, args.tokenizer, prefix, args.seed, args.valid_fraction)
    log.info("tokens: %s", meta["splits"])
    return {f"{split}.{key}": value for split, counts in meta["splits"].items()
            for key, value in counts.items() if key != "files"}


@command("index-tokens", arg("--shards", nargs="+"), OUT,
         job=lambda args: f"tokenize/{Path(args.out).parent.name}",
         params=lambda args: {"shards": len(args.shards)}, inputs=("shards",), outputs=("out",))
def index_tokens_command(args, job) -> dict:
    """A mix's token files in shard order (`meta.json`), the list the trainer reads."""
    index = index_tokens(args.shards, args.out)
    return {f"{split}.{key}": value for split, counts in index["splits"].items()
            for key, value in counts.items() if key != "files"}


@command("heldout-docs", DOCS, SEED, VALID_FRACTION, arg("--limit", type=int), OUT,
         job="heldout_docs", params=lambda args: {"seed": args.seed, "limit": args.limit},
         inputs=("docs",), outputs=("out",))
def heldout_docs_command(args, job) -> dict:
    """The held-out documents of the tokenizer's split (the ones not trained on), for
    per-domain perplexity."""
    heldout = (doc for path in args.docs for doc in read_jsonl(path)
               if is_valid_doc(doc["id"], args.seed, args.valid_fraction))
    written = write_jsonl_gz(args.out, islice(heldout, args.limit))
    log.info("%d held-out documents", written)
    return {"documents": written}

"""Tokenizer training (Hugging Face `tokenizers`, byte-level BPE) and OLMo token memmaps.

The token files follow OLMo's format: one flat array of token ids per file, raw (no header),
uint16 when the vocabulary fits, documents separated by EOS, so OLMo's `MemMapDataset` can read
them with `np.memmap(path, dtype=np.uint16, mode="r")`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.io.storage import (
    atomic_path,
    read_json,
    read_jsonl,
    stable_fraction,
    write_json,
    write_jsonl_gz,
)
from lmforge.posttrain.chat import ASSISTANT, SYSTEM, USER, tokenizer_config
from lmforge.runner import DOCS, OUT, OUT_DIR, SEED, VALID_FRACTION, arg, command

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Chat-format role markers are single tokens; their order keeps the older ids.
SPECIAL_TOKENS = [EOS, PAD, USER, ASSISTANT, SYSTEM]


def is_valid_doc(doc_id: str, seed: int, fraction: float) -> bool:
    """Held-out split by a seeded hash of the id: stable when other documents change."""
    return stable_fraction(f"{seed}/{doc_id}") < fraction


def _texts(paths: list[str], seed: int, fraction: float, want_valid: bool) -> Iterator[str]:
    for path in paths:
        for doc in read_jsonl(path):
            if is_valid_doc(doc["id"], seed, fraction) == want_valid:
                yield doc["text"]


def train_tokenizer(paths: list[str], out_path: str | Path, vocab_size: int, seed: int,
                    valid_fraction: float) -> dict:
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
    tokenizer.train_from_iterator(_texts(paths, seed, valid_fraction, want_valid=False), trainer)
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp), pretty=False)
    # transformers' files beside it: special tokens and the Tulu chat template.
    write_json(Path(out_path).parent / "tokenizer_config.json", tokenizer_config(EOS, PAD))
    return {"vocab_size": tokenizer.get_vocab_size()}


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


def tokenize_corpus(paths: list[str], tokenizer_path: str | Path, out_dir: str | Path,
                    seed: int, valid_fraction: float, batch_size: int = 256) -> dict:
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = tokenizer.token_to_id(EOS)
    dtype = token_dtype(tokenizer.get_vocab_size())
    out_dir = Path(out_dir)
    meta = {"dtype": dtype.name, "vocab_size": tokenizer.get_vocab_size(), "eos_token_id": eos_id,
            "pad_token_id": tokenizer.token_to_id(PAD), "splits": {}}
    for split in ("train", "valid"):
        docs = {"n": 0}

        def chunks(split=split, docs=docs):
            batch: list[str] = []
            for text in [*_texts(paths, seed, valid_fraction, want_valid=split == "valid"), None]:
                if text is not None:
                    batch.append(text)
                if batch and (text is None or len(batch) == batch_size):
                    for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
                        docs["n"] += 1
                        yield encoding.ids + [eos_id]
                    batch = []

        tokens = write_memmap(out_dir / f"{split}.npy", chunks(), dtype)
        meta["splits"][split] = {"documents": docs["n"], "tokens": tokens}
    write_json(out_dir / "meta.json", meta)
    return meta


def open_tokens(path: str | Path, meta_path: str | Path) -> np.memmap:
    meta = read_json(meta_path)
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


log = logging.getLogger(__name__)


@command("train-tokenizer", DOCS, OUT, SEED, arg("--vocab-size", type=int), VALID_FRACTION,
         job="train_tokenizer",
         params=lambda args: {"vocab_size": args.vocab_size, "seed": args.seed,
                              "valid_fraction": args.valid_fraction},
         inputs=("docs",), outputs=("out",))
def train_tokenizer_command(args, job) -> dict:
    """A byte-level BPE tokenizer trained on the mix's training split."""
    return train_tokenizer(args.docs, args.out, args.vocab_size, args.seed, args.valid_fraction)


@command("tokenize", DOCS, arg("--tokenizer"), OUT_DIR, SEED, VALID_FRACTION,
         params=lambda args: {"seed": args.seed, "valid_fraction": args.valid_fraction},
         inputs=("docs", "tokenizer"), outputs=("out_dir",))
def tokenize_command(args, job) -> dict:
    """The mix as OLMo token memmaps, train and valid."""
    meta = tokenize_corpus(args.docs, args.tokenizer, args.out_dir, args.seed,
                           args.valid_fraction)
    log.info("tokens: %s", meta)
    return meta["splits"]


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

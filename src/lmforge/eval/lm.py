"""Language models for evaluation behind one interface (Catwalk's idea): an lmforge checkpoint of
any stage, or any local `transformers` causal-LM directory, scores continuations and generates.

Requests follow lm-evaluation-harness' semantics so that the numbers are comparable with it:
trailing spaces of a context move to its continuation, the continuation's tokens are those of
`context + continuation` after the context's tokens, an empty context is the end-of-text token,
and inputs keep the last `max_length` tokens. Requests are scored in batches, longest first,
right-padded (a causal model's scores of the real tokens do not see the padding); identical
token sequences are scored once; and the output head and softmax run only at the
continuation's positions — with a 100k vocabulary the head is most of a small model's work.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmforge.io.storage import InputError


@dataclass(frozen=True)
class Scored:
    """Log-likelihood of one continuation: summed over its tokens, whether greedy decoding
    would have produced it, and its token count (for per-token normalisation)."""

    logprob: float
    is_greedy: bool
    tokens: int


class LanguageModel:
    """`hidden` maps token ids (batch × length) to the last hidden states, `head` any of their
    positions to logits: `head(hidden(ids))` are the model's logits. `continue_ids(ids, n,
    stop)` is the model's own greedy generation: at most n new token ids, without the closing
    end-of-text, ending early where `stop(new ids)` is true."""

    def __init__(self, name: str, hidden: Callable[[torch.Tensor], torch.Tensor],
                 head: Callable[[torch.Tensor], torch.Tensor],
                 encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                 eot_id: int, max_length: int, batch_size: int = 16,
                 continue_ids: Callable[[list[int], int, Callable], list[int]] | None = None):
        self.name, self.hidden, self.head = name, hidden, head
        self.encode, self.decode = encode, decode
        self.eot_id, self.max_length, self.batch_size = eot_id, max_length, batch_size
        self.continue_ids = continue_ids

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(ids))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.eot_id], self.encode(continuation)
        whole, context_ids = self.encode(context + continuation), self.encode(context)
        return context_ids, whole[len(context_ids):]

    def loglikelihood(self, requests: Sequence[tuple[str, str]], progress: bool = False
                      ) -> list[Scored]:
        """One `Scored` per (context, continuation), in the order given."""
        pairs = [self.encode_pair(c, x) for c, x in requests]
        for (context, continuation), pair in zip(requests, pairs):
            if not pair[1]:
                raise InputError(f"continuation {continuation!r} of {context[-40:]!r} "
                                 "has no tokens")
        return self.score_tokens(pairs, progress)

    def rolling_loglikelihood(self, text: str) -> tuple[float, int]:
        """Log-likelihood of a whole document and its token count (lm-eval's rolling
        log-likelihood): its tokens after an end-of-text token, in disjoint windows of
        `max_length` predictions, each conditioned on the tokens of its own window."""
        tokens = self.encode(text)
        if not tokens:
            raise InputError(f"document {text[:40]!r} has no tokens")
        sequence = [self.eot_id] + tokens
        windows = [([sequence[start]], tokens[start:start + self.max_length])
                   for start in range(0, len(tokens), self.max_length)]
        return sum(s.logprob for s in self.score_tokens(windows)), len(tokens)

    @torch.no_grad()
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]], progress: bool = False
                     ) -> list[Scored]:
        """`Scored` for token-level (context, continuation) pairs. Requests whose model inputs
        are the same (the choices of a lettered multiple-choice question: one-token
        continuations of one context) share one row of the batch."""
        requests = dict.fromkeys((tuple(c + x), len(x)) for c, x in pairs)
        by_input: dict[tuple, list[tuple[tuple, int]]] = {}
        for seq, n in requests:
            by_input.setdefault(seq[-(self.max_length + 1):][:-1], []).append((seq, n))
        order = sorted(by_input, key=len, reverse=True)
        scored: dict[tuple[tuple, int], Scored] = {}
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc=f"scoring with {self.name}", disable=not progress):
            chunk = order[start:start + self.batch_size]
            batch = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for row, ids in enumerate(chunk):
                batch[row, :len(ids)] = torch.tensor(ids)
            hidden = self.hidden(batch)
            rows, positions, targets = [], [], []
            for row, ids in enumerate(chunk):
                for seq, n in by_input[ids]:
                    rows += [row] * n
                    positions += range(len(ids) - n, len(ids))
                    targets += seq[-n:]
            targets = torch.tensor(targets)
            logprobs = F.log_softmax(self.head(hidden[rows, positions]).float(), dim=-1)
            picked = logprobs.gather(-1, targets[:, None])[:, 0]
            greedy = logprobs.argmax(-1) == targets
            offset = 0
            for ids in chunk:
                for seq, n in by_input[ids]:
                    scored[(seq, n)] = Scored(
                        logprob=picked[offset:offset + n].sum().item(),
                        is_greedy=bool(greedy[offset:offset + n].all()), tokens=n)
                    offset += n
        return [scored[(tuple(c + x), len(x))] for c, x in pairs]

    def generate(self, prompt: str, stop: Sequence[str], max_new_tokens: int) -> str:
        """Greedy continuation of `prompt`, cut at the first stop sequence or end of text."""
        if self.continue_ids is None:
            raise InputError(f"{self.name} cannot generate")

        def stopped(new: list[int]) -> bool:
            return any(s in self.decode(new) for s in stop)

        text = self.decode(self.continue_ids(self.encode(prompt) or [self.eot_id],
                                             max_new_tokens, stopped))
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return text[:cut] if cut >= 0 else text


def load(path: str | Path, tokenizer: str | Path | None = None, name: str | None = None,
         batch_size: int = 16) -> LanguageModel:
    """An lmforge checkpoint (with the workflow's `tokenizer.json`) or a `transformers`
    causal-LM directory (its own tokenizer), in fp32 on the CPU."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: no readable config.json ({err})") from None
    name = name or path.name
    if "model_type" in config:
        return _transformers_model(path, name, batch_size)
    if tokenizer is None:
        raise InputError(f"{path} is an lmforge checkpoint: give the tokenizer.json it was "
                         "trained with")
    from lmforge.data.tokenize import EOS, load_tokenizer
    from lmforge.model.checkpoint import load_model

    model = load_model(path).eval()
    tok = load_tokenizer(tokenizer)
    eot = tok.token_to_id(EOS)

    def continue_ids(ids: list[int], max_new_tokens: int, stop) -> list[int]:
        [(new, ended)] = model.generate([ids], max_new_tokens, eot, stop=stop)
        return new[:-1] if ended else new

    return LanguageModel(name, model.hidden_states, model.head,
                         lambda text: tok.encode(text, add_special_tokens=False).ids,
                         tok.decode, eot, model.cfg.max_seq_len, batch_size, continue_ids)


def _transformers_model(path: Path, name: str, batch_size: int) -> LanguageModel:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    eot = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    if eot is None:
        raise InputError(f"{path}: the tokenizer has no end-of-text token")
    max_length = next((getattr(model.config, key) for key in
                       ("max_position_embeddings", "n_positions", "seq_length")
                       if getattr(model.config, key, None)), 2048)
    def continue_ids(ids: list[int], max_new_tokens: int, stop) -> list[int]:
        # transformers' own greedy generation (its KV cache); stop strings are cut afterwards.
        out = model.generate(torch.tensor([ids[-max_length:]]), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eot, pad_token_id=eot)
        new = out[0, len(ids[-max_length:]):].tolist()
        return new[:new.index(eot)] if eot in new else new

    lm = LanguageModel(name, lambda ids: model.base_model(input_ids=ids).last_hidden_state,
                       model.get_output_embeddings(),
                       lambda text: tok.encode(text, add_special_tokens=False),
                       lambda ids: tok.decode(ids), eot, max_length, batch_size, continue_ids)
    # Some architectures scale or cap the head's output (Gemma 2, Cohere): then use the full
    # forward pass, whose logits are the model's by definition.
    probe = torch.tensor([[eot] * 4])
    with torch.no_grad():
        if not torch.allclose(lm.logits(probe), model(input_ids=probe).logits, atol=1e-5):
            lm.hidden, lm.head = (lambda ids: model(input_ids=ids).logits), (lambda x: x)
    return lm

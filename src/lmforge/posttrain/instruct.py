"""Post-training data: open-instruct's three record formats, the verifiers that score RLVR
answers, and the instruction data the workflow generates for the tiny default.

Formats (open-instruct / Tulu 3):
- SFT: `{"messages": [...]}`;
- preferences (DPO): `{"chosen": [...], "rejected": [...]}`, two conversations that share the
  prompt and differ in the last assistant turn;
- RLVR: `{"messages": [...], "ground_truth": str, "dataset": str}`, where `dataset` picks the
  verifier: a final numeric answer (`gsm8k`, `arithmetic`) or an IFEval-style constraint
  (`ifeval`, ground truth `{"func_name": ..., <arguments>}` as open-instruct writes it).

Generated data comes from two skills the tiny model can learn: adding two numbers (as bare
questions and word problems; the operand pairs the arith_gen evaluation uses are never
trained on) and completing a sentence of the corpus under a checkable constraint. A form
check alone is gamed by a constant answer ("indeed" meets three of the four constraints), so
generated constraint prompts add the sentence's true `continuation` to the ground truth and
the verifier also requires the response to complete it (`completes`); external ifeval records
carry no continuation and get open-instruct's form check only. (open-instruct's own verifier
does not know the key: train it on generated ifeval records through lmforge.)
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lmforge.data import sources
from lmforge.data.tokenize import is_valid_doc
from lmforge.eval import generated as tasks
from lmforge.eval.generated import TasksConfig
from lmforge.io.storage import InputError, read_jsonl, write_jsonl_gz
from lmforge.posttrain import chat
from lmforge.runner import CFG, OUT_DIR, SEED, VALID_FRACTION, arg, command, json_object
from lmforge.settings import Section


@dataclass(frozen=True)
class SkillCounts(Section):
    SECTION = "skill counts"

    arithmetic: int
    constraint: int


@dataclass(frozen=True)
class InstructDataConfig(Section):
    SECTION = "instruct_data"

    preference_pairs: SkillCounts
    rlvr_prompts: SkillCounts
    heldout: SkillCounts


def _checked(path: str | Path, index: int, check: Callable[[dict], None], record: dict
             ) -> dict:
    try:
        check(record)
    except InputError as err:
        raise InputError(f"{path}: record {index}: {err}") from None
    return record


def _check_sft(record: dict) -> None:
    chat.check_messages(record.get("messages"))


def _check_preference(record: dict) -> None:
    chosen = chat.check_messages(record.get("chosen"))
    rejected = chat.check_messages(record.get("rejected"))
    if len(chosen) < 2:
        raise InputError("a preference pair needs a prompt before the compared answers")
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if conversation[-1]["role"] != "assistant":
            raise InputError(f"{name} must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise InputError("chosen and rejected must share the prompt (all turns but the last)")


def _check_rlvr(record: dict) -> None:
    messages = chat.check_messages(record.get("messages"))
    if messages[-1]["role"] == "assistant":
        raise InputError("an RLVR prompt must not end with an assistant turn")
    if record.get("dataset") not in VERIFIERS:
        raise InputError(f"dataset {record.get('dataset')!r} has no verifier "
                         f"(known: {sorted(VERIFIERS)})")
    if not isinstance(record.get("ground_truth"), str):
        raise InputError("ground_truth must be a string")
    if record["dataset"] == "ifeval":
        constraint_from(record["ground_truth"])


def read_records(path: str | Path, kind: str) -> list[dict]:
    """The records of a JSONL(.gz) file in one of open-instruct's formats (`sft`,
    `preference`, `rlvr`), each checked; a malformed record is an InputError naming it."""
    check = {"sft": _check_sft, "preference": _check_preference, "rlvr": _check_rlvr}[kind]
    records = [_checked(path, i, check, r) for i, r in enumerate(read_jsonl(path))]
    if not records:
        raise InputError(f"{path}: no {kind} records")
    return records


# --- verifiers -------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def verify_number(response: str, ground_truth: str) -> bool:
    """GSM8K-style: the last number in the response equals the ground truth."""
    found = _NUMBER.findall(response)
    target = _number(ground_truth)
    return bool(found) and target is not None and _number(found[-1]) == target


# IFEval-style checks under open-instruct's function names (arguments as in its ground truth).
CONSTRAINTS: dict[str, Callable[..., bool]] = {
    "validate_lowercase": lambda text: text == text.lower(),
    "validate_uppercase": lambda text: text == text.upper(),
    "validate_no_commas": lambda text: "," not in text,
    "validate_end": lambda text, end_phrase: text.strip().endswith(end_phrase),
    "verify_keywords": lambda text, keyword_list: all(
        k.lower() in text.lower() for k in keyword_list),
}


# The content check: word-level F1 (SQuAD's answer overlap, case and punctuation ignored)
# between the response and the sentence's true continuation. F1 fails a short answer (low
# recall) and one padded with other words (low precision); a generated answer (the
# continuation, transformed, at most followed by "indeed") scores 1, or 2n/(2n+1) with
# "indeed" after its n words (≥ 0.8 from n = 2; continuations have 4 or more).
MIN_CONTENT_F1 = 0.5


def _words(text: str) -> Counter:
    return Counter(re.sub(r"[^\w\s]", "", text.casefold()).split())


def completes(response: str, continuation: str) -> bool:
    """Whether the response completes the sentence: word F1 with `continuation` ≥
    MIN_CONTENT_F1."""
    said, truth = _words(response), _words(continuation)
    common = sum((said & truth).values())
    return 2 * common >= MIN_CONTENT_F1 * (said.total() + truth.total())


def constraint_from(ground_truth: str) -> tuple[str, dict, str | None]:
    """(constraint name, its arguments, the true continuation or None when the ground truth
    carries none, as open-instruct's ifeval records)."""
    try:
        spec = json.loads(ground_truth)
        name = spec.pop("func_name")
        continuation = spec.pop("continuation", None)
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
        raise InputError(f"ifeval ground truth {ground_truth[:80]!r} is not "
                         '{"func_name": ..., <arguments>}') from None
    if name not in CONSTRAINTS:
        raise InputError(f"constraint {name!r} is not one of {sorted(CONSTRAINTS)}")
    if continuation is not None and not (isinstance(continuation, str) and _words(continuation)):
        raise InputError(f"continuation {continuation!r} must be a string with words")
    return name, {k: v for k, v in spec.items() if v is not None}, continuation


def verify_constraint(response: str, ground_truth: str) -> bool:
    """The response meets the constraint and, when the ground truth carries a continuation,
    completes the sentence (`completes`)."""
    name, arguments, continuation = constraint_from(ground_truth)
    return (bool(response.strip()) and CONSTRAINTS[name](response, **arguments)
            and (continuation is None or completes(response, continuation)))


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "gsm8k": verify_number, "arithmetic": verify_number, "ifeval": verify_constraint}


def verify(record: dict, response: str) -> bool:
    return VERIFIERS[record["dataset"]](response, record["ground_truth"])


# --- generated data --------------------------------------------------------------------------

WORD_PROBLEMS = (
    "{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
    "A shelf holds {a} books and {b} more are added. How many books are on the shelf?",
    "{name} walked {a} miles on Monday and {b} miles on Tuesday. How many miles in total?",
)
NAMES = ("Ann", "Ben", "Maya", "Omar", "Lena")
CONSTRAINT_TEMPLATES = {
    # name: (instruction appended to the prompt, ground-truth arguments, response transform)
    "validate_lowercase": ("Answer in lowercase letters only.", {}, str.lower),
    "validate_uppercase": ("Answer in capital letters only.", {}, str.upper),
    "validate_no_commas": ("Do not use any commas.", {}, lambda t: t.replace(",", "")),
    "validate_end": ('End your answer with the word "indeed".', {"end_phrase": "indeed"},
                     lambda t: t.rstrip(".") + " indeed"),
}


def arithmetic_question(a: int, b: int, rng: random.Random) -> str:
    """A bare question (the arith_gen evaluation's form) or, as often, a word problem."""
    if rng.random() < 0.5:
        return tasks.arith_question(a, b)
    return rng.choice(WORD_PROBLEMS).format(a=a, b=b, name=rng.choice(NAMES))


def training_pairs(tasks_cfg: TasksConfig | Mapping
                   ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Operand pairs to train on and those the arith_gen evaluation holds out."""
    tasks_cfg = TasksConfig.of(tasks_cfg)
    arith = tasks_cfg.arith_gen
    held = tasks.eval_arith_pairs(arith.items, arith.max_operand, tasks_cfg.seed)
    held_set = set(held)
    train = [(a, b) for a in range(arith.max_operand + 1)
             for b in range(arith.max_operand + 1) if (a, b) not in held_set]
    return train, held


def corpus_sentences(mix_paths: Iterable[str], seed: int, valid_fraction: float
                     ) -> tuple[list[list[str]], list[list[str]]]:
    """Sentences of 8–24 words from the mix as word lists: (training documents, held-out
    documents), the held-out ones being the tokenizer's valid split."""
    train: list[list[str]] = []
    held: list[list[str]] = []
    for path in mix_paths:
        for doc in read_jsonl(path):
            target = held if is_valid_doc(doc["id"], seed, valid_fraction) else train
            for para in doc["text"].split("\n"):
                for sent in sources.sentences(para):
                    if 8 <= len(sent.split()) <= 24:
                        target.append(sent.split())
    return train, held


def draw(items: list, n: int, rng: random.Random) -> list:
    """n items, each as often as the others (shuffled passes over the list): distinct items
    when n ≤ len(items)."""
    out: list = []
    while len(out) < n:
        out += rng.sample(items, len(items))
    return out[:n]


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def completion_prompt(words: list[str]) -> tuple[str, str]:
    half = len(words) // 2
    return "Complete the sentence: " + " ".join(words[:half]), " ".join(words[half:])


def constrained_example(words: list[str], name: str) -> tuple[str, str, str]:
    """(prompt, ground truth with the true continuation, an answer that meets the constraint)
    for a sentence."""
    instruction, arguments, transform = CONSTRAINT_TEMPLATES[name]
    prompt, rest = completion_prompt(words)
    return (f"{prompt}\n{instruction}",
            json.dumps({"func_name": name, **arguments, "continuation": rest}), transform(rest))


def rlvr_records(pairs: list[tuple[int, int]], sentences: list[list[str]], n_arithmetic: int,
                 n_constraint: int, rng: random.Random) -> list[dict]:
    """Prompts with verifiable answers in open-instruct's RLVR format."""
    records = []
    for a, b in draw(pairs, n_arithmetic, rng):
        records.append({"messages": _user(arithmetic_question(a, b, rng)),
                        "ground_truth": str(a + b), "dataset": "arithmetic"})
    for words in draw(sentences, n_constraint, rng):
        prompt, truth, _ = constrained_example(words, rng.choice(sorted(CONSTRAINT_TEMPLATES)))
        records.append({"messages": _user(prompt), "ground_truth": truth, "dataset": "ifeval"})
    rng.shuffle(records)
    return records


def _corrupt_number(value: int, rng: random.Random) -> str:
    return str(max(0, value + rng.choice([-3, -2, -1, 1, 2, 3, 10])) if value else value + 1)


def _break_form(words: list[str], name: str, truth: str) -> str:
    """The sentence's continuation, not meeting the constraint."""
    violating = completion_prompt(words)[1]
    if verify_constraint(violating, truth):  # e.g. already lowercase: break it otherwise
        violating = violating.upper() if name == "validate_lowercase" else violating + ", no"
    return violating


def preference_records(pairs: list[tuple[int, int]], sentences: list[list[str]],
                       n_arithmetic: int, n_constraint: int, rng: random.Random) -> list[dict]:
    """Pairs made from a correct answer (chosen) and a corrupted one (rejected): a wrong sum,
    or a completion that breaks its constraint or, as often, one that meets it but completes
    another sentence (the preference is for the content as well as the form)."""
    records = []
    for a, b in draw(pairs, n_arithmetic, rng):
        prompt = _user(arithmetic_question(a, b, rng))
        records.append({
            "chosen": prompt + [{"role": "assistant", "content": str(a + b)}],
            "rejected": prompt + [{"role": "assistant", "content": _corrupt_number(a + b, rng)}],
            "dataset": "arithmetic"})
    for words, other in zip(draw(sentences, n_constraint, rng),
                            draw(sentences, n_constraint, rng)):
        name = rng.choice(sorted(CONSTRAINT_TEMPLATES))
        prompt, truth, answer = constrained_example(words, name)
        # Half the rejected answers meet the constraint but complete another sentence; the
        # rest (and any other sentence whose answer happens to complete this one) break it.
        rejected = constrained_example(other, name)[2]
        if rng.random() < 0.5 or verify_constraint(rejected, truth):
            rejected = _break_form(words, name, truth)
        records.append({"chosen": _user(prompt) + [{"role": "assistant", "content": answer}],
                        "rejected": _user(prompt) + [{"role": "assistant",
                                                      "content": rejected}],
                        "dataset": "ifeval"})
    rng.shuffle(records)
    return records


def make_posttrain_data(mix_paths: list[str], out_dir: str | Path,
                        cfg: InstructDataConfig | Mapping, tasks_cfg: TasksConfig | Mapping,
                        seed: int, valid_fraction: float) -> dict:
    """Preference pairs and RLVR prompts, for training and held out: held-out arithmetic uses
    the arith_gen evaluation's operand pairs, held-out constraints the held-out documents."""
    cfg = InstructDataConfig.of(cfg)
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    train_pairs, held_pairs = training_pairs(tasks_cfg)
    train_sentences, held_sentences = corpus_sentences(mix_paths, seed, valid_fraction)
    if not train_sentences or not held_sentences:
        raise InputError("the mix has no sentences of 8-24 words for instructions")
    pref, rlvr, held = cfg.preference_pairs, cfg.rlvr_prompts, cfg.heldout
    sets = {
        "preference_train": preference_records(train_pairs, train_sentences, pref.arithmetic,
                                               pref.constraint, rng),
        "preference_valid": preference_records(held_pairs, held_sentences, held.arithmetic,
                                               held.constraint, rng),
        "rlvr_train": rlvr_records(train_pairs, train_sentences, rlvr.arithmetic,
                                   rlvr.constraint, rng),
        "rlvr_valid": rlvr_records(held_pairs, held_sentences, held.arithmetic,
                                   held.constraint, rng),
    }
    counts = {name: write_jsonl_gz(out_dir / f"{name}.jsonl.gz", records)
              for name, records in sets.items()}
    return counts


@command("instruct-data", arg("--mixes", nargs="+"), OUT_DIR, CFG,
         arg("--tasks-cfg", type=json_object), SEED, VALID_FRACTION, job="instruct_data",
         inputs=("mixes",), outputs=("out_dir",))
def instruct_data_command(args, job) -> dict:
    """Preference pairs and RLVR prompts for training and held out."""
    return make_posttrain_data(args.mixes, args.out_dir, args.cfg, args.tasks_cfg, args.seed,
                               args.valid_fraction)

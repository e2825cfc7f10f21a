"""The Tulu chat format (OLMo 2-Instruct, Tulu 3): `<|system|>`, `<|user|>` and `<|assistant|>`
turns, each role marker on its own line, the end-of-text token after every assistant turn, and
`<|assistant|>\\n` as the generation prompt.

The same format exists twice: as a Jinja template stored with the tokenizer (so `transformers`'
`apply_chat_template` renders it from an exported model directory) and as `segments` here,
which also says which pieces are trained on (assistant content and its end-of-text); a test
holds the two to the same token ids.
"""

from __future__ import annotations

from lmforge.io.storage import InputError

SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)


def check_messages(messages) -> list[dict]:
    """A conversation as open-instruct stores it: a list of {role, content} with known roles
    and string content; anything else is an InputError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InputError(f"message {index}: role must be one of {sorted(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise InputError(f"message {index}: content must be a string")
    return messages


def segments(messages: list[dict], eos: str, add_generation_prompt: bool = False
             ) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces: only assistant content and the
    end-of-text closing it are trained on, as in open-instruct's SFT."""
    out: list[tuple[str, bool]] = []
    check_messages(messages)
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        if message["role"] == "assistant":
            out.append((f"{ASSISTANT}\n", False))
            out.append((message["content"] + eos, True))
            if not last:
                out.append(("\n", False))
        else:
            out.append((f"{ROLES[message['role']]}\n{message['content']}\n", False))
    if add_generation_prompt:
        out.append((f"{ASSISTANT}\n", False))
    return out


def render(messages: list[dict], eos: str, add_generation_prompt: bool = False) -> str:
    return "".join(text for text, _ in segments(messages, eos, add_generation_prompt))


def encode(tokenizer, messages: list[dict], eos: str, add_generation_prompt: bool = False
           ) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation and, per token, whether it is trained on. Pieces are
    encoded one by one: role markers are special tokens and pieces start after a newline,
    where the byte-level pre-tokenizer splits anyway, so the ids equal the whole text's."""
    ids: list[int] = []
    trained: list[bool] = []
    for text, train in segments(messages, eos, add_generation_prompt):
        piece = tokenizer.encode(text, add_special_tokens=False).ids
        ids += piece
        trained += [train] * len(piece)
    return ids, trained


def tokenizer_config(eos: str, pad: str, max_length: int | None = None) -> dict:
    """`tokenizer_config.json` for `transformers`: the fast tokenizer, its special tokens, the
    chat template and (for a model's directory) the model's context length."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
              "chat_template": CHAT_TEMPLATE}
    return {**config, "model_max_length": max_length} if max_length else config


def prompt_text(user: str, eos: str) -> str:
    """A one-turn prompt in the chat format, ending in the generation prompt."""
    return render([{"role": "user", "content": user}], eos, add_generation_prompt=True)

import json

import pytest

from lmforge.data.tokenize import EOS, PAD, SPECIAL_TOKENS
from lmforge.io.storage import InputError
from lmforge.posttrain import chat

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
    [{"role": "system", "content": "Answer with a number."},
     {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
     {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "It is 8."}],
    [{"role": "user", "content": "Say hello\nin two lines."}],
]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A small byte-level BPE with the workflow's special tokens, as train_tokenizer makes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = [json.dumps(c) for c in CONVERSATIONS] * 20 + ["What is the sum of two numbers?"]
    tokenizer.train_from_iterator(text, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _hf_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_the_template_in_transformers_gives_our_text_and_token_ids(tokenizer_file, tmp_path,
                                                                   generation_prompt):
    from tokenizers import Tokenizer

    (tmp_path / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(chat.tokenizer_config(EOS, PAD,
                                                                                     128)))
    hf = _hf_tokenizer(tmp_path)
    ours = Tokenizer.from_file(str(tokenizer_file))
    for messages in CONVERSATIONS:
        text = chat.render(messages, EOS, generation_prompt)
        assert hf.apply_chat_template(messages, tokenize=False,
                                      add_generation_prompt=generation_prompt) == text
        ids, trained = chat.encode(ours, messages, EOS, generation_prompt)
        assert hf.apply_chat_template(messages, tokenize=True, return_dict=False,
                                      add_generation_prompt=generation_prompt) == ids
        assert ours.encode(text, add_special_tokens=False).ids == ids
        # Trained tokens spell exactly the assistant turns, each closed by end-of-text.
        answer = ours.decode([i for i, t in zip(ids, trained) if t], skip_special_tokens=False)
        assert answer == "".join(m["content"] + EOS for m in messages
                                 if m["role"] == "assistant")


def test_an_exported_model_directory_carries_the_template(tokenizer_file, tmp_path):
    from lmforge.model.hf import export_hf
    from lmforge.model.olmo2 import ModelConfig, Olmo2

    model = Olmo2(ModelConfig(vocab_size=400, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32))
    export_hf(model, tmp_path / "hf", tokenizer=tokenizer_file)
    hf = _hf_tokenizer(tmp_path / "hf")
    assert hf.chat_template == chat.CHAT_TEMPLATE and hf.pad_token == PAD
    prompt = hf.apply_chat_template(CONVERSATIONS[0][:1], tokenize=False,
                                    add_generation_prompt=True)
    assert prompt == "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"


@pytest.mark.parametrize("messages, error", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "hi"}], "role must be one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
])
def test_malformed_conversations_are_clear_errors(messages, error):
    with pytest.raises(InputError, match=error):
        chat.render(messages, EOS)

"""Write the character-level tokenizers of the tiny LLaDA and Dream references (tests/data/*_tiny).

The reference models have a 128-token vocabulary, too small for a byte-level BPE, so their test
tokenizers have one token per printable ASCII character (ids 0-95), the family's chat tokens, reserved
fillers, and mask / end of text at the ids the configs name (126 / 127).  The chat templates are
written from the descriptions in the reference notes: LLaDA's Llama-3-style turns (always ending with
the assistant header) and Dream's ChatML with a default system prompt.

Run: .venv/bin/python tests/data/make_tokenizers.py   (the files are committed; this documents them)
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models

HERE = Path(__file__).parent
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]  # 96 characters, ids 0..95

LLADA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    # In an expression, so that Jinja does not drop the template's trailing newline.
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)
DREAM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(chat_tokens: list[str], mask: str, eos: str) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(CHARS)}, merges=[]))
    tok.decoder = decoders.Fuse()
    fillers = [f"<|reserved_token_{i}|>" for i in range(126 - len(CHARS) - len(chat_tokens))]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in chat_tokens + fillers + [mask, eos]])
    assert tok.get_vocab_size() == 128 and tok.token_to_id(mask) == 126 and tok.token_to_id(eos) == 127
    return tok


def write(folder: Path, tok: Tokenizer, config: dict) -> None:
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    llada = build(["<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                  "<|mdm_mask|>", "<|endoftext|>")
    write(HERE / "llada_tiny", llada, {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                                       "add_eos_token": False, "bos_token": "<|startoftext|>",
                                       "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                       "chat_template": LLADA_TEMPLATE})
    dream = build(["<|im_start|>", "<|im_end|>"], "<|mask|>", "<|endoftext|>")
    write(HERE / "dream_tiny", dream, {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                                       "bos_token": None, "eos_token": "<|endoftext|>",
                                       "pad_token": "<|endoftext|>", "chat_template": DREAM_TEMPLATE})


if __name__ == "__main__":
    main()

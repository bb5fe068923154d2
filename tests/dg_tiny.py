"""A tiny random DiffusionGemma folder (transformers' own model class, a small config, no download)
with a character-level tokenizer and a Gemma-style chat template, for the backend and server tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_config(canvas_length: int = 16):
    from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig
    text = DiffusionGemmaTextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, layer_types=["sliding_attention", "full_attention"], global_head_dim=32,
        num_global_key_value_heads=1, num_experts=4, top_k_experts=2, moe_intermediate_size=32, sliding_window=64,
        use_bidirectional_attention="vision", pad_token_id=0, eos_token_id=1, bos_token_id=2,
        max_position_embeddings=512)
    vision = dict(model_type="gemma4_vision", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  head_dim=8, intermediate_size=32)
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                image_token_id=509, boi_token_id=508, eoi_token_id=510)


def tokenizer() -> Tokenizer:
    specials = ["<pad>", "<eos>", "<bos>"]
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[]))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in specials + ["<start_of_turn>", "<end_of_turn>"]])
    return tok


def make_folder(folder: Path, seed: int = 0, canvas_length: int = 16) -> Path:
    """Build the random model with the traced class Quicksilver loads, and save it (safetensors)."""
    from quicksilver.loading.families.diffusion_gemma import traced_model_class
    torch.manual_seed(seed)
    model = traced_model_class()(tiny_config(canvas_length)).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
         "chat_template": CHAT_TEMPLATE}, indent=2))
    return folder

"""Dream 7B (Dream-org/Dream-v0-Base-7B, -Instruct-7B, Dream-Coder) on Quicksilver's own model code.

Dream is Qwen2.5 made bidirectional: grouped-query attention, biases on q/k/v (not on o), RoPE with
theta 1e6, RMSNorm, SwiGLU, an untied head, and the Qwen2 tensor names under ``model.`` (the head is
``lm_head``).  Its one quirk for a sampler: it keeps the autoregressive head of its parent, so the
output at position i predicts token i + 1 (``logits_shift``); the samplers read the prediction for
position j from position j - 1.
"""
from __future__ import annotations

from ..layout import CheckpointError
from ...config import ModelConfig

MODEL_TYPE = "dream"
END_OF_TURN = "<|im_end|>"  # id 151645 in the released tokenizer


def model_config(raw: dict) -> ModelConfig:
    """Quicksilver's config for a Dream ``config.json``; options our model does not implement are errors."""
    if raw.get("use_sliding_window"):
        raise CheckpointError("Dream with use_sliding_window=true is not supported")
    if raw.get("rope_scaling"):
        raise CheckpointError(f"Dream with rope_scaling={raw['rope_scaling']!r} is not supported (plain RoPE only)")
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"Dream with hidden_act={raw['hidden_act']!r} is not supported (silu only)")
    try:
        heads = int(raw["num_attention_heads"])
        eos = int(raw.get("eos_token_id") if raw.get("eos_token_id") is not None else 151643)
        return ModelConfig(
            vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]), num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads, num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rope_theta=float(raw.get("rope_theta", 10000.0)), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            causal=False, logits_shift=True, attention_bias=True,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)), family=MODEL_TYPE,
            mask_token_id=int(raw.get("mask_token_id", 151666)), eos_token_id=eos,
            pad_token_id=int(raw.get("pad_token_id") if raw.get("pad_token_id") is not None else eos),
            fim_prefix_id=-1, fim_suffix_id=-1, fim_middle_id=-1)
    except KeyError as e:
        raise CheckpointError(f"Dream config.json lacks the key {e.args[0]!r}") from None


def name_map(cfg: ModelConfig) -> dict[str, str]:
    """Checkpoint tensor name -> Quicksilver parameter name (Qwen2 names under ``model.``)."""
    names = {"model.embed_tokens.weight": "embed_tokens.weight", "model.norm.weight": "norm.weight"}
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.num_hidden_layers):
        ours = ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.o_proj.weight",
                "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
        ours += [f"self_attn.{x}_proj.{kind}" for x in "qkv" for kind in ("weight", "bias")]
        names.update({f"model.layers.{i}.{name}": f"layers.{i}.{name}" for name in ours})
    return names


def ignored(name: str) -> bool:
    """Checkpoint tensors that carry no weights (rotary tables some exports include)."""
    return name.endswith("rotary_emb.inv_freq")

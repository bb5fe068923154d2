"""LLaDA (GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA 1.5) on Quicksilver's own model code.

LLaDA is a Llama-style bidirectional transformer, so it maps one to one onto ``model.Transformer``:
no biases, multi-head attention (``n_kv_heads`` may equal ``n_heads``), rotate-half RoPE, RMSNorm,
SwiGLU and an untied head.  Its quirks are names: everything sits under ``model.transformer.``, the
gate of the MLP is ``ff_proj`` (the SiLU branch) and the linear branch ``up_proj``, the block's
down projection and the top-level LM head are both called ``ff_out``.  Logits are not shifted:
position i predicts token i.
"""
from __future__ import annotations

from ..layout import CheckpointError
from ...config import ModelConfig

MODEL_TYPE = "llada"
END_OF_TURN = "<|eot_id|>"  # id 126348 in the released tokenizer

# Options of LLaDA's config that change the computation; the value our model implements.
_REQUIRED = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
             "alibi": False, "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False,
             "include_bias": False, "bias_for_layer_norm": False}


def model_config(raw: dict) -> ModelConfig:
    """Quicksilver's config for a LLaDA ``config.json``; options our model does not implement are errors."""
    for key, want in _REQUIRED.items():
        if key in raw and raw[key] not in (want, None):
            raise CheckpointError(f"LLaDA option {key}={raw[key]!r} is not supported (only {want!r})")
    try:
        d_model, n_heads = int(raw["d_model"]), int(raw["n_heads"])
        kv = 1 if raw.get("multi_query_attention") else int(raw.get("n_kv_heads") or n_heads)
        mlp = raw.get("mlp_hidden_size") or int(raw.get("mlp_ratio", 4)) * d_model
        vocab = int(raw.get("embedding_size") or raw["vocab_size"])
        return ModelConfig(
            vocab_size=vocab, hidden_size=d_model, intermediate_size=int(mlp), num_hidden_layers=int(raw["n_layers"]),
            num_attention_heads=n_heads, num_key_value_heads=kv,
            max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
            rope_theta=float(raw.get("rope_theta", 10000.0)), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            causal=False, logits_shift=False, attention_bias=bool(raw.get("include_qkv_bias", False)),
            rope_fp32=bool(raw.get("rope_full_precision", True)),
            tie_word_embeddings=bool(raw.get("weight_tying", False)), family=MODEL_TYPE,
            mask_token_id=int(raw.get("mask_token_id", 126336)), eos_token_id=int(raw.get("eos_token_id", 126081)),
            pad_token_id=int(raw.get("pad_token_id", raw.get("eos_token_id", 126081))),
            fim_prefix_id=-1, fim_suffix_id=-1, fim_middle_id=-1)
    except KeyError as e:
        raise CheckpointError(f"LLaDA config.json lacks the key {e.args[0]!r}") from None


def name_map(cfg: ModelConfig) -> dict[str, str]:
    """Checkpoint tensor name -> Quicksilver parameter name."""
    p = "model.transformer."
    names = {p + "wte.weight": "embed_tokens.weight", p + "ln_f.weight": "norm.weight"}
    if not cfg.tie_word_embeddings:
        names[p + "ff_out.weight"] = "lm_head.weight"
    per_block = {"attn_norm.weight": "input_layernorm.weight", "q_proj.weight": "self_attn.q_proj.weight",
                 "k_proj.weight": "self_attn.k_proj.weight", "v_proj.weight": "self_attn.v_proj.weight",
                 "attn_out.weight": "self_attn.o_proj.weight", "ff_norm.weight": "post_attention_layernorm.weight",
                 "ff_proj.weight": "mlp.gate_proj.weight", "up_proj.weight": "mlp.up_proj.weight",
                 "ff_out.weight": "mlp.down_proj.weight"}
    if cfg.attention_bias:
        per_block.update({f"{x}_proj.bias": f"self_attn.{x}_proj.bias" for x in "qkv"})
    for i in range(cfg.num_hidden_layers):
        names.update({f"{p}blocks.{i}.{theirs}": f"layers.{i}.{ours}" for theirs, ours in per_block.items()})
    return names

"""Export a causal Quicksilver model (the AR twin) as a Hugging Face ``LlamaForCausalLM``.

Our twin is a Llama: pre-norm RMSNorm blocks, rotate-half rotary embeddings with the same inverse
frequencies, grouped-query attention, SwiGLU MLP, final norm and an untied head.  The weights map one
to one (``embed_tokens``/``layers.*``/``norm`` gain a ``model.`` prefix; ``lm_head`` stays).  Used by
the benchmark to run ``transformers``' own ``generate()`` on exactly the twin's weights; needs the
optional ``transformers`` package (``pip install 'quicksilver-lm[bench]'``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model import Transformer


class ExportError(ValueError):
    """The model cannot be expressed as a transformers Llama."""


def llama_config_dict(model: Transformer) -> dict:
    cfg = model.config
    if not cfg.causal:
        raise ExportError("only causal models (the AR twin) can be exported as LlamaForCausalLM")
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, attention_bias=cfg.attention_bias, mlp_bias=False,
        tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=None, eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )


def llama_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in model.state_dict().items():
        out[name if name.startswith("lm_head.") else f"model.{name}"] = tensor
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def to_hf_llama(model: Transformer, dtype: torch.dtype | None = None):
    """A ``transformers.LlamaForCausalLM`` holding the same weights (in eval mode)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise ExportError("the transformers package is needed: pip install 'quicksilver-lm[bench]'") from None
    d = llama_config_dict(model)
    theta = d.pop("rope_theta")
    config = LlamaConfig(**d, rope_theta=theta)
    # transformers >= 5 keeps rotary settings in rope_parameters; set both spellings.
    if getattr(config, "rope_parameters", None) is not None:
        config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    config.rope_theta = theta
    hf = LlamaForCausalLM(config)
    missing, unexpected = hf.load_state_dict(llama_state_dict(model), strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ExportError(f"weights do not map onto Llama: missing {missing}, unexpected {unexpected}")
    hf.generation_config.pad_token_id = model.config.pad_token_id
    hf.generation_config.eos_token_id = model.config.eos_token_id
    hf.generation_config.bos_token_id = None
    device = next(model.parameters()).device
    return hf.to(device=device, dtype=dtype or next(model.parameters()).dtype).eval()


def export_hf_llama(model: Transformer, out: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Write a folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads."""
    out = Path(out)
    hf = to_hf_llama(model, dtype=dtype)
    hf.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save(out / "tokenizer.json")
    return out

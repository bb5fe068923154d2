"""AR-to-diffusion adaptation: start a diffusion model from its autoregressive twin's weights.

Dream and LLaDA 2 were made this way.  The tensors are the same; only the attention (causal →
bidirectional) and, optionally, the logit alignment change.  With ``logits_shift`` the hidden state
at position i keeps predicting token i + 1, as it did in the AR model, so the adapted model starts
from what the twin already knows; without it every position must learn to predict itself.
"""
from __future__ import annotations

import torch

from ..loading.checkpoint import CheckpointError, load_model
from ..config import ModelConfig
from ..model import Transformer
from ..tokenizer import Tokenizer

# Fields that must agree for the twin's tensors to mean the same thing in the new model.
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rope_theta", "rms_norm_eps", "attention_bias", "tie_word_embeddings")
_TOKEN_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "fim_prefix_id", "fim_suffix_id",
                 "fim_middle_id")


def check_compatible(source: ModelConfig, target: ModelConfig, where: str) -> None:
    for name in _SHAPE_FIELDS + _TOKEN_FIELDS:
        a, b = getattr(source, name), getattr(target, name)
        if a != b:
            raise CheckpointError(f"train.init_from = {where} has {name} = {a}, but the run's model has {b}; "
                                  f"the [model] section and the data's tokenizer must match the initial model")


def init_from(model: Transformer, name_or_path: str, tokenizer: Tokenizer) -> ModelConfig:
    """Copy the weights of ``name_or_path`` (a bundled name or checkpoint folder) into ``model``.

    The run's own config (causal, logits_shift) is kept; the tokenizer must be the one the initial
    model was trained with, so that token ids mean the same thing.  Returns the source config.
    """
    source, source_tok = load_model(name_or_path, device="cpu", dtype=torch.float32)
    check_compatible(source.config, model.config, name_or_path)
    if source_tok.hf.to_str() != tokenizer.hf.to_str():
        raise CheckpointError(f"train.init_from = {name_or_path} was trained with a different tokenizer than "
                              f"the run's data; build the data with that model's tokenizer.json")
    device = next(model.parameters()).device
    with torch.no_grad():
        model.load_state_dict({k: v.to(device) for k, v in source.state_dict().items()})
    return source.config

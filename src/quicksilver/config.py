"""Model configuration: one dataclass, saved and loaded as a Hugging Face style ``config.json``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration file or value the user supplied is wrong."""


def read_json_object(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """The JSON object in ``path``; a file that is not valid JSON or not an object raises ``error``
    with one sentence naming the file (every config-like file a user hands us goes through here)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object")
    return data


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # False: bidirectional attention (masked diffusion). True: causal attention (the AR twin).
    causal: bool = False
    # True when position i predicts token i+1 (AR models, and Dream-style adapted diffusion models).
    logits_shift: bool = False
    # > 0: block diffusion (BD3-LM): block-causal attention, a position sees its own block of
    # ``block_size`` positions and every block before it (blocks counted from rotary position 0), so
    # the keys/values of finished blocks never change and a prefix cache is exact.  0: off.
    block_size: int = 0
    attention_bias: bool = False
    # Apply the rotary embedding in float32 even when the model runs in bf16 (LLaDA's
    # rope_full_precision); by default it is applied in the model's dtype (Llama, Qwen2, ours).
    rope_fp32: bool = False
    tie_word_embeddings: bool = False
    family: str = "quicksilver"
    # Special token ids (filled from the tokenizer when a model is created).
    mask_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 2
    fim_prefix_id: int = 3
    fim_suffix_id: int = 4
    fim_middle_id: int = 5
    # Ids besides eos_token_id that end a generation the same way (end of turn: LLaDA's <|eot_id|>,
    # Dream's <|im_end|>).  Quicksilver's own models have none.
    stop_token_ids: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must be divisible by num_key_value_heads")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError("the attention head dimension must be even (rotary embedding)")
        if self.block_size < 0:
            raise ConfigError("block_size must be 0 (off) or a positive number of positions")
        if self.block_size and self.causal:
            raise ConfigError("block_size (block-causal attention) is for diffusion models; causal must be false")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def stop_ids(self) -> list[int]:
        """Every id that ends a generation: end of text first, then the end-of-turn ids."""
        return [self.eos_token_id] + [i for i in self.stop_token_ids if i != self.eos_token_id]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "quicksilver"
        d["architectures"] = ["QuicksilverForDiffusionLM" if not self.causal else "QuicksilverForCausalLM"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = {"model_type", "architectures", "torch_dtype"}
        unknown = set(d) - known - ignored
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(read_json_object(path, ConfigError))

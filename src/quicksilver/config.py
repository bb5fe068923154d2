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
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object")
    return data


_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings")
_POSITIVE_FLOATS = ("rope_theta", "rms_norm_eps")
_BOOLS = ("causal", "logits_shift", "attention_bias", "rope_fp32", "tie_word_embeddings")
_TOKEN_IDS = ("mask_token_id", "eos_token_id", "pad_token_id")
_OPTIONAL_TOKEN_IDS = ("fim_prefix_id", "fim_suffix_id", "fim_middle_id")  # -1: the model has none


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, bool, type(None), list, dict)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_problems(cfg: "ModelConfig") -> list[str]:
    """Everything wrong with a model config, one clause per problem (types first: a value of the
    wrong type is not range-checked).  JSON's ``256.0`` is not an integer and ``"yes"`` not a boolean."""
    problems = []
    for name in _POSITIVE_INTS:
        value = getattr(cfg, name)
        if not _is_int(value):
            problems.append(f"{name} must be an integer, got {_shown(value)}")
        elif value <= 0:
            problems.append(f"{name} must be positive, got {value}")
    for name in _POSITIVE_FLOATS:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{name} must be a number, got {_shown(value)}")
        elif not value > 0 or value == float("inf"):
            problems.append(f"{name} must be a positive finite number, got {value}")
    for name in _BOOLS:
        value = getattr(cfg, name)
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {_shown(value)}")
    if not isinstance(cfg.family, str):
        problems.append(f"family must be a string, got {_shown(cfg.family)}")
    if not isinstance(cfg.extra, dict):
        problems.append(f"extra must be an object, got {_shown(cfg.extra)}")
    vocab = cfg.vocab_size if _is_int(cfg.vocab_size) and cfg.vocab_size > 0 else None
    for name in _TOKEN_IDS + _OPTIONAL_TOKEN_IDS:
        value = getattr(cfg, name)
        lowest = -1 if name in _OPTIONAL_TOKEN_IDS else 0
        if not _is_int(value):
            problems.append(f"{name} must be an integer token id, got {_shown(value)}")
        elif value < lowest or (vocab is not None and value >= vocab):
            problems.append(f"{name} {value} is outside the vocabulary (0 to {vocab - 1 if vocab else '?'})")
    if not isinstance(cfg.stop_token_ids, list) or not all(_is_int(i) for i in cfg.stop_token_ids):
        problems.append(f"stop_token_ids must be a list of integer token ids, got {_shown(cfg.stop_token_ids)}")
    elif vocab is not None and any(not 0 <= i < vocab for i in cfg.stop_token_ids):
        bad = next(i for i in cfg.stop_token_ids if not 0 <= i < vocab)
        problems.append(f"stop_token_ids holds {bad}, outside the vocabulary (0 to {vocab - 1})")
    heads, kv, hidden = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    if all(_is_int(v) and v > 0 for v in (heads, kv, hidden)):  # the shapes, once the numbers are sound
        if hidden % heads:
            problems.append("hidden_size must be divisible by num_attention_heads")
        elif (hidden // heads) % 2:
            problems.append("the attention head dimension must be even (rotary embedding)")
        if heads % kv:
            problems.append("num_attention_heads must be divisible by num_key_value_heads")
    if not _is_int(cfg.block_size) or cfg.block_size < 0:
        problems.append(f"block_size must be 0 (off) or a positive integer, got {_shown(cfg.block_size)}")
    elif cfg.block_size and cfg.causal is True:
        problems.append("block_size (block-causal attention) is for diffusion models; causal must be false")
    return problems


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
        problems = config_problems(self)
        if problems:  # every problem, one clause each, so that a hand-edited file is fixed in one go
            raise ConfigError("; ".join(problems))

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
        if "model_type" in d and not isinstance(d["model_type"], str):
            raise ConfigError(f"model_type must be a string, got {_shown(d['model_type'])}")
        archs = d.get("architectures", [])
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"architectures must be a list of strings, got {_shown(archs)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(read_json_object(path, ConfigError))

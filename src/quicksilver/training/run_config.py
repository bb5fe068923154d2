"""A training run's configuration: the ``[model]``, ``[train]`` (and ``[drafter]``) tables of a TOML
recipe, type-checked key by key (an unknown key or a wrong type is one sentence, not a traceback)."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


OBJECTIVES = ("diffusion", "ar", "sft", "drafter", "block_diffusion", "distill")
BLOCK_OBJECTIVES = ("block_diffusion", "distill")


@dataclass
class TrainConfig:
    # "diffusion", "ar", "sft", "block_diffusion" (BD3-LM; needs [model] block_size) or "distill"
    # (certainty-forcing self-distillation on generated trajectories, ``distill.py``)
    objective: str = "diffusion"
    data: str = "data/stdlib-8k"
    out_dir: str = "runs/default"
    seq_len: int = 256
    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    log_every: int = 20  # training loss, lr and speed go to log.jsonl every this many steps
    eval_batches: int = 8
    eval_time_samples: int = 4  # diffusion validation: mask draws per sequence
    save_every: int = 200
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: keep the last 2 only)
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    dtype: str = "bf16"  # autocast dtype: "bf16" or "fp32"
    device: str = "auto"
    # AR and block_diffusion: share of sequences turned into fill-in-the-middle (PSM) examples
    fim_rate: float = 0.5
    time_limit_minutes: float = 0.0  # 0: no limit; otherwise stop (and checkpoint) after this long
    # "steps": warm-up and cosine decay over max_steps (exactly resumable).  "time": over
    # time_limit_minutes of training (for fixed wall-clock budgets, e.g. one GPU lease).
    schedule: str = "steps"
    eval_every_minutes: float = 0.0  # also validate whenever this many minutes passed since the last one
    compile: bool = False  # torch.compile each transformer block (falls back to eager if compiling fails)
    # AR-to-diffusion adaptation: start from this model's weights (a bundled name or a checkpoint
    # folder, e.g. the AR twin); [model] causal / logits_shift say how the new model reads them.
    init_from: str = ""
    # Under torchrun: "ddp" (replicated model) or "fsdp" (FSDP2, parameters sharded over processes).
    # batch_size is the global batch; each of N processes takes batch_size / N rows of it.
    distributed: str = "ddp"
    # objective = "sft": JSONL of {"prompt", "response"} or {"messages"}; the tokenizer is still
    # data's tokenizer.json (usually the one the initial model, init_from, was trained with).
    sft_data: str = ""
    # objective = "distill": a trajectory file (``quicksilver trajectories``), prompts + targets.
    distill_data: str = ""
    # objective = "distill": weight of dParallel's certainty-forcing entropy term (0: plain CE).
    certainty: float = 2.0
    # objective = "distill": share of blocks masked as a suffix (every position from a uniformly drawn
    # cut on) instead of at random: the states a left-to-right decoder (commit = "ordered") visits,
    # so certainty is forced where that decoder reads it.  0: dParallel's random masks only.
    suffix_share: float = 0.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"train.objective must be one of {', '.join(repr(o) for o in OBJECTIVES)}")
        if self.objective == "distill" and not self.distill_data:
            raise ConfigError("train.objective = 'distill' needs train.distill_data (a file written by "
                              "`quicksilver trajectories`)")
        if not 0 <= self.suffix_share <= 1:
            raise ConfigError("train.suffix_share must be between 0 and 1")
        if self.distributed not in ("ddp", "fsdp"):
            raise ConfigError("train.distributed must be 'ddp' or 'fsdp'")
        if self.objective == "sft" and not self.sft_data:
            raise ConfigError("train.objective = 'sft' needs train.sft_data (a JSONL file of prompt/response pairs)")
        if self.dtype not in ("bf16", "fp32"):
            raise ConfigError("train.dtype must be 'bf16' or 'fp32'")
        for name in ("seq_len", "batch_size", "max_steps", "eval_every", "save_every", "eval_batches", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive")
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        if self.schedule not in ("steps", "time"):
            raise ConfigError("train.schedule must be 'steps' or 'time'")
        if self.schedule == "time" and self.time_limit_minutes <= 0:
            raise ConfigError("train.schedule = 'time' needs train.time_limit_minutes > 0")


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig
    source: dict = field(default_factory=dict)


def _section(raw: dict, name: str, cls):
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} in [{name}]: {', '.join(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name not in section or f.default is dataclasses.MISSING:
            continue
        value, expected = section[f.name], type(f.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            section[f.name] = value = float(value)
        if expected in (int, float, bool, str) and type(value) is not expected:
            raise ConfigError(f"[{name}] {f.name} must be {expected.__name__}, got {value!r}")
    try:
        return cls(**section)
    except TypeError as e:
        raise ConfigError(f"[{name}]: {e}") from None


def load_run_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e})") from None
    unknown = sorted(set(raw) - {"model", "train", "drafter"})  # [drafter]: objective "drafter" (training/drafter.py)
    if unknown:
        raise ConfigError(f"unknown section{'s' if len(unknown) > 1 else ''} in {path}: {', '.join(unknown)}")
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    model = _section(raw, "model", ModelConfig)
    train = _section(raw, "train", TrainConfig)
    return RunConfig(model, train, raw)



"""The training loop: diffusion or AR objective, AdamW with warm-up and cosine decay, bf16 autocast,
periodic validation, atomic checkpoints and exact resume.

Everything random in a step (the batch, mask times, mask draws, FIM cuts) is drawn from generators
seeded by (seed, step), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import atomic_save_tensors, atomic_write_text, save_pretrained
from .config import ConfigError, ModelConfig
from .data.shards import ShardDataset
from .diffusion import ar_loss, diffusion_loss, fim_transform
from .model import Transformer
from .tokenizer import Tokenizer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    objective: str = "diffusion"  # "diffusion" or "ar"
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
    eval_batches: int = 8
    eval_time_samples: int = 4  # diffusion validation: mask draws per sequence
    save_every: int = 200
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: keep the last 2 only)
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    dtype: str = "bf16"  # autocast dtype: "bf16" or "fp32"
    device: str = "auto"
    fim_rate: float = 0.5  # AR only: share of sequences turned into fill-in-the-middle examples
    time_limit_minutes: float = 0.0  # 0: no limit; otherwise stop (and checkpoint) after this long
    # "steps": warm-up and cosine decay over max_steps (exactly resumable).  "time": over
    # time_limit_minutes of training (for fixed wall-clock budgets, e.g. one GPU lease).
    schedule: str = "steps"
    eval_every_minutes: float = 0.0  # also validate whenever this many minutes passed since the last one
    compile: bool = False  # torch.compile each transformer block (falls back to eager if compiling fails)

    def __post_init__(self) -> None:
        if self.objective not in ("diffusion", "ar"):
            raise ConfigError("train.objective must be 'diffusion' or 'ar'")
        if self.dtype not in ("bf16", "fp32"):
            raise ConfigError("train.dtype must be 'bf16' or 'fp32'")
        for name in ("seq_len", "batch_size", "max_steps", "eval_every", "save_every", "eval_batches"):
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
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ConfigError(f"unknown section{'s' if len(unknown) > 1 else ''} in {path}: {', '.join(unknown)}")
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    model = _section(raw, "model", ModelConfig)
    train = _section(raw, "train", TrainConfig)
    return RunConfig(model, train, raw)


def lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` over the
    rest of ``max_steps`` (or of the time budget when ``schedule = "time"``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "time":
        progress = min(1.0, elapsed_s / (cfg.time_limit_minutes * 60))
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False, foreach=True)


def step_loss(model, tokens: torch.Tensor, cfg: TrainConfig, mcfg: ModelConfig, step: int):
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step * 2 + 1)
    if cfg.objective == "diffusion":
        return diffusion_loss(model, tokens, mcfg.mask_token_id, gen)
    if cfg.fim_rate > 0:
        tokens = fim_transform(tokens, mcfg.fim_prefix_id, mcfg.fim_suffix_id, mcfg.fim_middle_id, gen,
                               cfg.fim_rate)
    return ar_loss(model, tokens)


@torch.no_grad()
def validation_loss(model, batches: list[torch.Tensor], cfg: TrainConfig, mcfg: ModelConfig,
                    device: torch.device) -> float:
    """Nats per token on fixed validation windows: the diffusion NELBO (an upper bound on NLL,
    averaged over ``eval_time_samples`` fixed mask draws) or the AR model's exact NLL."""
    model.eval()
    total, count = 0.0, 0
    autocast = cfg.dtype == "bf16"
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if cfg.objective == "diffusion":
                for s in range(cfg.eval_time_samples):
                    gen = torch.Generator().manual_seed(10_000 + i * 100 + s)
                    out = diffusion_loss(model, batch, mcfg.mask_token_id, gen)
                    total += float(out.nll_sum)
                    count += out.tokens
            else:
                out = ar_loss(model, batch)
                total += float(out.nll_sum)
                count += out.tokens
    model.train()
    return total / max(count, 1)


def compile_blocks(model: Transformer, log=print) -> None:
    """Compile each transformer block (static shapes); the LM head stays eager because diffusion
    training runs it on a varying number of masked rows."""
    try:
        for block in model.layers:
            block.compile()
    except Exception as e:  # compiling is an optimisation: never let it stop a run
        log(f"torch.compile unavailable ({e}); training eagerly")


# -- checkpoints ------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                out[f"{names[id(p)]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def save_checkpoint(out_dir: Path, model, opt, state: dict, tokenizer: Tokenizer, keep: int = 2,
                    keep_every: int = 0) -> Path:
    """Write ``checkpoints/step-N`` completely, then point ``latest`` at it (atomic rename)."""
    ckpt_root = out_dir / "checkpoints"
    final = ckpt_root / f"step-{state['step']:07d}"
    tmp = ckpt_root / f".tmp-step-{state['step']:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_pretrained(model, tokenizer, tmp)
    names = {id(p): n for n, p in model.named_parameters()}
    atomic_save_tensors(_optimizer_tensors(opt, names), tmp / "optimizer.safetensors")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(out_dir / "latest", final.name + "\n")
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        if keep_every and int(old.name.split("-")[1]) % keep_every == 0:
            continue  # milestones stay, e.g. to measure decoding speed against training progress
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: Path, model, opt) -> dict | None:
    from safetensors.torch import load_file
    pointer = out_dir / "latest"
    if not pointer.is_file():
        return None
    folder = out_dir / "checkpoints" / pointer.read_text().strip()
    weights = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(weights)
    opt_state = load_file(str(folder / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, value in opt_state.items():
        pname, _, skey = key.partition("::")
        opt.state[params[pname]][skey] = value
    return json.loads((folder / "trainer_state.json").read_text())


# -- the loop ---------------------------------------------------------------------------------
def train(run: RunConfig, resume: bool = False, progress: bool = True, log=print) -> dict:
    cfg, mcfg = run.train, run.model
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer.from_file(Path(cfg.data) / "tokenizer.json")
    mcfg = dataclasses.replace(
        mcfg, vocab_size=tokenizer.vocab_size, causal=(cfg.objective == "ar") or mcfg.causal,
        logits_shift=(cfg.objective == "ar") or mcfg.logits_shift,
        mask_token_id=tokenizer.mask_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
        fim_prefix_id=tokenizer.fim_prefix_id, fim_suffix_id=tokenizer.fim_suffix_id,
        fim_middle_id=tokenizer.fim_middle_id)
    if cfg.seq_len > mcfg.max_position_embeddings:
        raise ConfigError("train.seq_len exceeds model.max_position_embeddings")
    train_data = ShardDataset(cfg.data, "train")
    val_batches = ShardDataset(cfg.data, "val").fixed_batches(cfg.eval_batches, cfg.batch_size, cfg.seq_len)

    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg)
    model.reset_parameters(seed=cfg.seed)
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.compile:
        compile_blocks(model, log)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "cpu_s": 0.0, "best_val": None, "best_step": None,
             "history": [], "config": {"model": mcfg.to_dict(), "train": dataclasses.asdict(cfg)}}
    if resume:
        loaded = load_checkpoint(out_dir, model, opt)
        if loaded is None:
            log(f"no checkpoint in {out_dir}; starting from scratch")
        else:
            state = loaded
            log(f"resumed from step {state['step']} ({state['tokens']:,} tokens)")
    (out_dir / "run_config.json").write_text(json.dumps(state["config"], indent=2))
    log_file = (out_dir / "log.jsonl").open("a")

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    bar = Progress(TextColumn(f"[bold]{cfg.objective}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                   TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   disable=not progress)
    task = bar.add_task("train", total=cfg.max_steps, completed=state["step"], loss=float("nan"), tps=0.0,
                        val=state["best_val"] and f"{state['best_val']:.3f}")
    autocast = cfg.dtype == "bf16"
    session_start = time.time()
    elapsed_before = state["elapsed_s"]
    cpu_start, cpu_before = time.process_time(), state.get("cpu_s", 0.0)
    window_tokens, window_start = 0, time.time()
    last_eval = time.time()
    compiled_pending = cfg.compile

    def checkpoint():
        state["elapsed_s"] = elapsed_before + time.time() - session_start
        state["cpu_s"] = cpu_before + time.process_time() - cpu_start
        save_checkpoint(out_dir, model, opt, state, tokenizer, keep_every=cfg.keep_every)

    def evaluate():
        val = validation_loss(model, val_batches, cfg, mcfg, device)
        record = {"step": state["step"], "tokens": state["tokens"], "epochs": state["tokens"] / len(train_data),
                  "val_loss": val,
                  "elapsed_s": elapsed_before + time.time() - session_start}
        state["history"].append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if state["best_val"] is None or val < state["best_val"]:
            state["best_val"], state["best_step"] = val, state["step"]
            save_pretrained(model, tokenizer, out_dir / "best")
            atomic_write_text(out_dir / "best" / "train_summary.json", json.dumps(
                {k: state[k] for k in ("step", "tokens", "best_val", "best_step")}
                | {"elapsed_s": record["elapsed_s"], "epochs": record["epochs"], "objective": cfg.objective},
                indent=2))
        return val

    with bar:
        try:
            while state["step"] < cfg.max_steps:
                step = state["step"]
                lr = lr_at(step, cfg, elapsed_before + time.time() - session_start)
                for group in opt.param_groups:
                    group["lr"] = lr
                tokens = train_data.batch(step, cfg.batch_size, cfg.seq_len, cfg.seed).to(device)
                try:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        out = step_loss(model, tokens, cfg, mcfg, step)
                    out.loss.backward()
                except Exception as e:
                    if not compiled_pending:
                        raise
                    # Compiling happens lazily at the first call: fall back to eager once.
                    log(f"torch.compile failed ({type(e).__name__}: {e}); training eagerly")
                    for block in model.layers:
                        block._compiled_call_impl = None
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        out = step_loss(model, tokens, cfg, mcfg, step)
                    out.loss.backward()
                compiled_pending = False
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                state["step"] += 1
                state["tokens"] += tokens.numel()
                window_tokens += tokens.numel()
                loss = float(out.loss.detach())
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step}; lower train.lr")
                tps = window_tokens / max(1e-9, time.time() - window_start)
                if state["step"] % 20 == 0:
                    log_file.write(json.dumps({"step": state["step"], "tokens": state["tokens"], "loss": loss,
                                               "lr": lr, "tok_s": round(tps)}) + "\n")
                    log_file.flush()
                    window_tokens, window_start = 0, time.time()
                val_text = None
                due_by_time = cfg.eval_every_minutes and time.time() - last_eval >= cfg.eval_every_minutes * 60
                if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps or due_by_time:
                    val_text = f"{evaluate():.3f}"
                    last_eval = time.time()
                bar.update(task, completed=state["step"], loss=loss, tps=tps,
                           **({"val": val_text} if val_text else {}))
                if state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps:
                    checkpoint()
                limit = cfg.time_limit_minutes * 60
                if limit and elapsed_before + time.time() - session_start >= limit:
                    log(f"time limit of {cfg.time_limit_minutes} minutes reached at step {state['step']}")
                    if not val_text:
                        evaluate()
                    if state["step"] % cfg.save_every:
                        checkpoint()
                    break
        except KeyboardInterrupt:
            checkpoint()
            log(f"interrupted: checkpoint saved at step {state['step']}; continue with --resume")
            raise
        finally:
            log_file.close()
    state["elapsed_s"] = elapsed_before + time.time() - session_start
    state["cpu_s"] = cpu_before + time.process_time() - cpu_start
    return state

"""The training loop: the objective (diffusion, AR, SFT, drafter, block diffusion, distillation),
AdamW with warm-up and cosine decay, bf16 autocast, periodic validation, atomic checkpoints and
exact resume.

Everything random in a step (the batch, mask times, mask draws, FIM cuts) is drawn from generators
seeded by (seed, step), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken.

The run's configuration (``TrainConfig``, ``RunConfig``, ``load_run_config``) is in ``run_config.py``,
run checkpoints in ``resume.py``, the objectives' data and losses in ``sft.py``, ``distill.py`` and
``drafter.py``; this module keeps the loop.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import time
from pathlib import Path

import torch

from .adapt import init_from
from ..config import ConfigError, ModelConfig
from ..data.shards import ShardDataset
from ..diffusion import ar_loss, block_diffusion_loss, block_times, diffusion_loss, fim_transform, sample_times
from .distributed import (DistInfo, Objective, all_reduce_sum, barrier, full_model_state, full_optimizer_state,
                          load_optimizer_state, teardown, wrap)
from .distributed import setup as dist_setup
from .run_config import BLOCK_OBJECTIVES, OBJECTIVES, RunConfig, TrainConfig, load_run_config  # noqa: F401
from .resume import DiskFullError, claim_out_dir, plain_copy, read_checkpoint, save_best, save_checkpoint
from .sft import sft_batch_loss, sft_step_loss
from ..model import Transformer
from ..tokenizer import Tokenizer

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


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False, foreach=True)


def step_loss(model, tokens: torch.Tensor, cfg: TrainConfig, mcfg: ModelConfig, step: int,
              rank: int = 0, world_size: int = 1):
    """The training loss of one step on this rank's rows of the global batch.

    Every random draw (mask times, masks, FIM cuts) is made for the whole global batch from a
    generator seeded by (seed, step) and this rank takes its own rows, so N ranks with B/N rows
    each draw exactly what one process with B rows draws.  The losses are means over this rank's
    rows; DDP/FSDP average gradients over ranks, which with equal slices is the global mean.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step * 2 + 1)
    if cfg.objective == "sft":  # tokens is (ids, prompt lengths)
        b = tokens[0].shape[0]
        return sft_step_loss(model, tokens, gen, mcfg, b * rank, b * world_size)
    if cfg.objective in BLOCK_OBJECTIVES:
        rows = (tokens[0] if isinstance(tokens, tuple) else tokens).shape[0]
        return block_step_loss(model, tokens, cfg, mcfg, gen, rows * rank, rows * world_size)
    b, n = tokens.shape
    total, first = b * world_size, b * rank
    if cfg.objective == "diffusion":
        times = sample_times(total, gen)[first:first + b]
        draws = torch.rand((total, n), generator=gen)[first:first + b]
        return diffusion_loss(model, tokens, mcfg.mask_token_id, None, times=times, draws=draws)
    if cfg.fim_rate > 0:
        tokens = fim_transform(tokens, mcfg.fim_prefix_id, mcfg.fim_suffix_id, mcfg.fim_middle_id, gen,
                               cfg.fim_rate, row_offset=first, total_rows=total)
    return ar_loss(model, tokens)


def block_step_loss(model, tokens, cfg: TrainConfig, mcfg: ModelConfig, gen: torch.Generator,
                    first: int, total: int):
    """Block diffusion (or distillation) loss on rows ``first``.. of a global batch of ``total`` rows,
    every draw made for the whole global batch from ``gen``."""
    if cfg.objective == "distill":  # tokens is (ids, prompt length)
        from .distill import distill_loss
        return distill_loss(model, tokens[0], tokens[1], mcfg, gen, first, total, cfg.certainty, cfg.suffix_share)
    b, n = tokens.shape
    if cfg.fim_rate > 0:  # as the AR twin was trained, so that the adapted model keeps infilling (PSM)
        tokens = fim_transform(tokens, mcfg.fim_prefix_id, mcfg.fim_suffix_id, mcfg.fim_middle_id, gen,
                               cfg.fim_rate, row_offset=first, total_rows=total)
    times = block_times(b, n // mcfg.block_size, gen, first, total)
    draws = torch.rand((total, n), generator=gen)[first:first + b]
    return block_diffusion_loss(model, tokens, mcfg.mask_token_id, mcfg.block_size, times, draws)


def _loss_terms(model, fn, *args) -> tuple[torch.Tensor, torch.Tensor, int]:
    out = fn(model, *args)
    return out.loss, out.nll_sum, out.tokens


@torch.no_grad()
def validation_loss(model, batches: list, cfg: TrainConfig, mcfg: ModelConfig,
                    device: torch.device, info: DistInfo = DistInfo()) -> float:
    """Nats per token on fixed validation windows: the diffusion NELBO (an upper bound on NLL,
    averaged over ``eval_time_samples`` fixed mask draws) or the AR model's exact NLL.

    ``model`` is the plain model or the wrapped objective (:mod:`quicksilver.training.distributed`).  Under
    torchrun each rank takes every world_size-th batch and the sums are added up, so the result
    equals a one-process evaluation; every rank runs the same number of forwards (FSDP needs that).
    """
    call = model if isinstance(model, Objective) or hasattr(model, "module") else Objective(model)
    call.eval()
    total, count = 0.0, 0
    autocast = cfg.dtype == "bf16"
    rounds = math.ceil(len(batches) / info.world_size)
    for r in range(rounds):
        i = r * info.world_size + info.rank
        real = i < len(batches)
        batch = batches[i if real else 0]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for s in range(cfg.eval_time_samples if cfg.objective != "ar" else 1):
                if cfg.objective == "ar":
                    _, nll, tokens = call(_loss_terms, ar_loss, batch.to(device))
                elif cfg.objective == "sft":
                    gen = torch.Generator().manual_seed(10_000 + i * 100 + s)
                    _, nll, tokens = call(_loss_terms, sft_batch_loss, batch, gen, mcfg, device)
                elif cfg.objective in BLOCK_OBJECTIVES:
                    gen = torch.Generator().manual_seed(10_000 + i * 100 + s)
                    rows = batch[0].shape[0] if isinstance(batch, tuple) else batch.shape[0]
                    held = batch if isinstance(batch, tuple) else batch.to(device)
                    val_cfg = dataclasses.replace(cfg, certainty=0.0, fim_rate=0.0)  # the plain NELBO / CE
                    _, nll, tokens = call(_loss_terms, block_step_loss, held, val_cfg, mcfg, gen, 0, rows)
                else:
                    gen = torch.Generator().manual_seed(10_000 + i * 100 + s)
                    _, nll, tokens = call(_loss_terms, diffusion_loss, batch.to(device), mcfg.mask_token_id, gen)
                if real:
                    total += float(nll)
                    count += tokens
    call.train()
    total, count = all_reduce_sum([total, float(count)], info, device)
    return total / max(count, 1)


def compile_blocks(model: Transformer, log=print) -> None:
    """Compile each transformer block (static shapes); the LM head stays eager because diffusion
    training runs it on a varying number of masked rows."""
    try:
        for block in model.layers:
            block.compile()
    except Exception as e:  # compiling is an optimisation: never let it stop a run
        log(f"torch.compile unavailable ({e}); training eagerly")


# -- the loop ---------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, mcfg: ModelConfig, tokenizer: Tokenizer, device: torch.device,
                log=print) -> Transformer:
    """The run's starting model: seeded random weights, or ``init_from``'s weights (adaptation)."""
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg)
    model.reset_parameters(seed=cfg.seed)
    model.to(device).train()
    if cfg.init_from:
        source = init_from(model, cfg.init_from, tokenizer)
        log(f"initialised from {cfg.init_from} ({'causal' if source.causal else 'bidirectional'} → "
            f"{'causal' if mcfg.causal else 'bidirectional'}, logits_shift={mcfg.logits_shift})")
    return model


def run_model_config(cfg: TrainConfig, mcfg: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """``[model]`` completed from the tokenizer; the AR objective implies causal, shifted logits."""
    causal = cfg.objective == "ar"
    if cfg.objective in BLOCK_OBJECTIVES:
        if mcfg.block_size <= 0:
            raise ConfigError(f"train.objective = '{cfg.objective}' needs [model] block_size > 0 (e.g. 8)")
        if cfg.seq_len % mcfg.block_size:
            raise ConfigError(f"train.seq_len = {cfg.seq_len} is not a multiple of model.block_size = {mcfg.block_size}")
    return dataclasses.replace(
        mcfg, vocab_size=tokenizer.vocab_size, causal=causal or mcfg.causal,
        logits_shift=causal or mcfg.logits_shift,
        mask_token_id=tokenizer.mask_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
        fim_prefix_id=tokenizer.fim_prefix_id, fim_suffix_id=tokenizer.fim_suffix_id,
        fim_middle_id=tokenizer.fim_middle_id)


def train(run: RunConfig, resume: bool = False, progress: bool = True, log=print, overwrite: bool = False) -> dict:
    """Train ``run``; under torchrun every rank calls this and trains its slice of each batch.

    The run owns ``train.out_dir``: a folder that holds anything is refused unless ``resume``
    (continue the run there) or ``overwrite`` (delete the run there and start over)."""
    cfg = run.train
    if cfg.objective == "drafter":  # a draft head on a frozen target: its own small loop, one process
        from .drafter import train_drafter
        return train_drafter(run, resume, progress, log, lr_at=lr_at)
    info, device = dist_setup(cfg.distributed, cfg.device)
    try:
        return _train(run, info, device, resume, progress, log if info.is_main else (lambda *a, **k: None),
                      overwrite=overwrite)
    finally:
        teardown(info)


def _train(run: RunConfig, info: DistInfo, device: torch.device, resume: bool, progress: bool, log,
           overwrite: bool = False) -> dict:
    cfg, mcfg = run.train, run.model
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size = {cfg.batch_size} (the global batch) is not divisible by the "
                          f"{info.world_size} processes")
    local_batch = cfg.batch_size // info.world_size
    out_dir = Path(cfg.out_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in train.out_dir and --overwrite deletes it: give one")
    # Every rank checks before any rank writes (the barrier), so a rank never sees rank 0's new files.
    run_id = claim_out_dir(out_dir, resume, overwrite, write=False, log=log)
    barrier(info)
    if info.is_main:
        run_id = claim_out_dir(out_dir, resume, overwrite, write=True, log=log)

    tokenizer = Tokenizer.from_file(Path(cfg.data) / "tokenizer.json")
    mcfg = run_model_config(cfg, mcfg, tokenizer)
    if cfg.seq_len > mcfg.max_position_embeddings:
        raise ConfigError("train.seq_len exceeds model.max_position_embeddings")
    if cfg.objective == "sft":
        from .sft import SFTDataset
        train_data = SFTDataset(cfg.sft_data, tokenizer, cfg.seq_len, "train")
        val_batches = SFTDataset(cfg.sft_data, tokenizer, cfg.seq_len, "val").fixed_batches(
            cfg.eval_batches, cfg.batch_size)
        log(f"SFT: {train_data.num_examples:,} training examples; {train_data.dropped:,} longer than "
            f"train.seq_len = {cfg.seq_len} dropped")
    elif cfg.objective == "distill":
        from .distill import TrajectoryDataset
        train_data = TrajectoryDataset(cfg.distill_data, cfg.seq_len, "train", device)
        val_batches = TrajectoryDataset(cfg.distill_data, cfg.seq_len, "val", device).fixed_batches(
            cfg.eval_batches, cfg.batch_size)
        log(f"distill: {len(train_data.rows):,} training trajectories, {train_data.prompt_len} prompt + "
            f"{cfg.seq_len - train_data.prompt_len} target tokens each")
    else:
        train_data = ShardDataset(cfg.data, "train")
        val_batches = ShardDataset(cfg.data, "val").fixed_batches(cfg.eval_batches, cfg.batch_size, cfg.seq_len)

    model = build_model(cfg, mcfg, tokenizer, device, log)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "cpu_s": 0.0, "best_val": None, "best_step": None,
             "history": [], "config": {"model": mcfg.to_dict(), "train": dataclasses.asdict(cfg)}}
    found = read_checkpoint(out_dir, log) if resume else None
    if resume and info.enabled:
        seen = all_reduce_sum([float(found is not None)], info, device)[0]
        if 0 < seen < info.world_size:
            raise ConfigError(f"only {seen:.0f} of {info.world_size} processes see a checkpoint in {out_dir}; "
                              f"train.out_dir must be on a filesystem every node shares to resume")
    if resume and found is None:
        log(f"no checkpoint in {out_dir}; starting from scratch")
    if found is not None:
        model.load_state_dict({k: v.to(device) for k, v in found[0].items()})
        state = found[2]
        state["run_id"] = state.get("run_id") or run_id
        log(f"resumed from step {state['step']} ({state['tokens']:,} tokens)")
    state.setdefault("run_id", run_id)  # pruning deletes only checkpoints that carry this id
    if cfg.compile:
        compile_blocks(model, log)
    wrapped = wrap(model, info, device)
    opt = make_optimizer(model, cfg)
    if found is not None:
        load_optimizer_state(wrapped, model, opt, found[1], info)
    if info.enabled:
        log(f"{info.world_size} processes ({info.mode}, {'nccl' if device.type == 'cuda' else 'gloo'}): "
            f"{local_batch} of the {cfg.batch_size} sequences of each batch per process")
    if info.is_main:
        (out_dir / "run_config.json").write_text(json.dumps(state["config"], indent=2))
    log_file = (out_dir / "log.jsonl").open("a") if info.is_main else None

    def write_log(record: dict) -> None:
        if log_file is not None:
            try:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(f"the disk holding {out_dir} is full: the training log could not be written "
                                        f"at step {state['step']}; free space, then continue with --resume") from None
                raise

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    bar = Progress(TextColumn(f"[bold]{cfg.objective}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                   TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   disable=not (progress and info.is_main))
    task = bar.add_task("train", total=cfg.max_steps, completed=state["step"], loss=float("nan"), tps=0.0,
                        val=state["best_val"] and f"{state['best_val']:.3f}")
    autocast = cfg.dtype == "bf16"
    session_start = time.time()
    elapsed_before = state["elapsed_s"]
    cpu_start, cpu_before = time.process_time(), state.get("cpu_s", 0.0)
    window_tokens, window_start = 0, time.time()
    last_eval = time.time()
    compiled_pending = cfg.compile

    def cpu_seconds() -> float:
        # CPU seconds of this process (of rank 0 under torchrun), the fair clock on a shared machine.
        return cpu_before + time.process_time() - cpu_start

    def checkpoint():
        state["elapsed_s"] = elapsed_before + time.time() - session_start
        state["cpu_s"] = cpu_seconds()
        # Gathering is collective under FSDP: every rank takes part, rank 0 writes.
        weights = full_model_state(wrapped, model, info)
        optimizer = full_optimizer_state(wrapped, model, opt, info)
        if info.is_main:
            save_checkpoint(out_dir, model, opt, state, tokenizer, keep_every=cfg.keep_every,
                            weights=weights, optimizer=optimizer)
        barrier(info)

    def evaluate():
        val = validation_loss(wrapped, val_batches, cfg, mcfg, device, info)
        record = {"step": state["step"], "tokens": state["tokens"], "epochs": state["tokens"] / len(train_data),
                  "val_loss": val, "elapsed_s": elapsed_before + time.time() - session_start,
                  "cpu_s": cpu_seconds()}
        state["history"].append(record)
        write_log(record)
        if state["best_val"] is None or val < state["best_val"]:
            state["best_val"], state["best_step"] = val, state["step"]
            weights = full_model_state(wrapped, model, info)
            if info.is_main:
                save_best(out_dir, plain_copy(mcfg, weights) if info.mode == "fsdp" and info.enabled else model,
                          tokenizer, {k: state[k] for k in ("step", "tokens", "best_val", "best_step")}
                          | {"elapsed_s": record["elapsed_s"], "epochs": record["epochs"], "objective": cfg.objective})
        return val

    def forward_backward(tokens, step):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _, _ = wrapped(_loss_terms, step_loss, tokens, cfg, mcfg, step, info.rank, info.world_size)
        loss.backward()
        return loss

    with bar:
        try:
            if cfg.init_from and state["step"] == 0:
                evaluate()  # the starting point: how much of the initial model's knowledge carries over
            while state["step"] < cfg.max_steps:
                step = state["step"]
                lr = lr_at(step, cfg, elapsed_before + time.time() - session_start)
                for group in opt.param_groups:
                    group["lr"] = lr
                tokens = train_data.batch(step, local_batch, cfg.seq_len, cfg.seed, info.rank, info.world_size)
                tokens = tokens.to(device) if torch.is_tensor(tokens) else tokens
                try:
                    loss_t = forward_backward(tokens, step)
                except Exception as e:
                    if not compiled_pending or info.enabled:
                        raise
                    # Compiling happens lazily at the first call: fall back to eager once.
                    log(f"torch.compile failed ({type(e).__name__}: {e}); training eagerly")
                    for block in model.layers:
                        block._compiled_call_impl = None
                    opt.zero_grad(set_to_none=True)
                    loss_t = forward_backward(tokens, step)
                compiled_pending = False
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                state["step"] += 1
                step_tokens = cfg.batch_size * cfg.seq_len
                state["tokens"] += step_tokens
                window_tokens += step_tokens
                # One small all-reduce per step: the global mean loss, and the wall-clock decisions
                # (time limit, timed validation) taken by rank 0 so that all ranks agree.
                elapsed = elapsed_before + time.time() - session_start
                limit = cfg.time_limit_minutes * 60
                due_by_time = bool(cfg.eval_every_minutes) and time.time() - last_eval >= cfg.eval_every_minutes * 60
                over_time = bool(limit) and elapsed >= limit
                loss_sum, due_flag, stop_flag = all_reduce_sum(
                    [float(loss_t.detach()), float(due_by_time and info.is_main), float(over_time and info.is_main)],
                    info, device)
                loss = loss_sum / info.world_size
                due_by_time, over_time = due_flag > 0, stop_flag > 0
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step}; lower train.lr")
                tps = window_tokens / max(1e-9, time.time() - window_start)
                if state["step"] % cfg.log_every == 0:
                    write_log({"step": state["step"], "tokens": state["tokens"], "loss": loss, "lr": lr,
                               "tok_s": round(tps), "cpu_s": round(cpu_seconds(), 1)})
                    window_tokens, window_start = 0, time.time()
                val_text = None
                if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps or due_by_time:
                    val_text = f"{evaluate():.3f}"
                    last_eval = time.time()
                bar.update(task, completed=state["step"], loss=loss, tps=tps,
                           **({"val": val_text} if val_text else {}))
                if state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps:
                    checkpoint()
                if over_time:
                    log(f"time limit of {cfg.time_limit_minutes} minutes reached at step {state['step']}")
                    if not val_text:
                        evaluate()
                    if state["step"] % cfg.save_every:
                        checkpoint()
                    break
        except KeyboardInterrupt:
            if not info.enabled:  # under torchrun the other ranks may be mid-step: no collective save
                checkpoint()
                log(f"interrupted: checkpoint saved at step {state['step']}; continue with --resume")
            raise
        finally:
            if log_file is not None:
                try:
                    log_file.close()
                except OSError:  # a full disk: the error that matters is already on its way
                    pass
    state["elapsed_s"] = elapsed_before + time.time() - session_start
    state["cpu_s"] = cpu_seconds()
    return state

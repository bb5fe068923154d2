"""Training objective ``drafter``: a draft head (``drafter.py``) on a frozen causal target.

The head must predict what the *target* writes, not what the corpus says (a tiny target's greedy
token is the corpus token only about half the time).  So the run first builds a pool of windows
``[corpus prompt | the target's greedy continuation]`` (the target in float32, greedy with the same
never-sample ids as ``sampling.ar``); in the continuation, every token is exactly the target's
greedy choice given all tokens before it, so a block anchored there has its targets in the window.

One step: ``batch_size`` pool windows; the frozen target runs over them once (its layer outputs are
the context features); ``blocks_per_window`` random anchors per window, each a block
``[anchor, M * (block_size - 1)]`` that sees the context strictly before the anchor and itself.
Loss: cross-entropy of position j of the block weighted by exp(-(j - 1) / loss_decay) (the first
drafts matter most: a draft is only accepted after every draft before it).  Validation reports the
loss and the *acceptance*: the mean number of leading drafts equal to the target's greedy tokens,
i.e. tokens accepted per round by greedy verification (excluding the target's bonus token).

Everything random is drawn from generators seeded by (seed, step): a run resumed from a checkpoint
takes the steps an uninterrupted one would take.  The pool is saved once (``pool.safetensors``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..loading.checkpoint import atomic_save_tensors, atomic_write_text, load_model
from ..config import ConfigError
from ..data.shards import ShardDataset
from ..drafter import DraftHead, DrafterSpec, save_drafter
from ..model import KVCache, Transformer
from ..sampling import rules
from ..sampling.stops import never_sample_ids


@dataclass
class DrafterTraining:
    """``[drafter]``: the head's shape (``DrafterSpec``) and how it is trained."""
    num_layers: int = 2
    block_size: int = 12
    target_layers: list = dataclasses.field(default_factory=lambda: [1, 3, 5])
    intermediate_size: int = 0
    blocks_per_window: int = 32
    loss_decay: float = 4.0  # weight of block position j: exp(-(j - 1) / loss_decay)
    prompt_len: int = 96  # corpus tokens before the target's continuation in each pool window
    pool_windows: int = 1024
    val_windows: int = 64
    pool_batch: int = 64  # rows generated together when building the pool
    eval_draft_len: int = 8  # acceptance is also reported for this many drafts per round

    @property
    def spec(self) -> DrafterSpec:
        return DrafterSpec(self.num_layers, self.block_size, list(self.target_layers), self.intermediate_size)

    @classmethod
    def from_dict(cls, d: dict) -> "DrafterTraining":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} in [drafter]: {', '.join(unknown)}")
        return cls(**d)


# -- the pool of the target's own continuations ---------------------------------------------------
@torch.no_grad()
def greedy_continuations(target: Transformer, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """(B, P + new_tokens): equal-length ``prompts`` followed by the target's greedy continuation."""
    banned = never_sample_ids(target.config)
    cache = KVCache(target.config.num_hidden_layers)
    logits = target(prompts, cache=cache)[:, -1]
    out = [prompts]
    for i in range(new_tokens):
        token = rules.suppress(logits.float(), banned).argmax(-1, keepdim=True)
        out.append(token)
        if i < new_tokens - 1:
            logits = target(token, cache=cache)[:, -1]
    return torch.cat(out, dim=1)


def build_pool(target: Transformer, data: ShardDataset, n: int, prompt_len: int, seq_len: int,
               seed: int, batch: int, log=print) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - prompt_len, (n,), generator=gen)
    prompts = data.tokens[starts[:, None] + torch.arange(prompt_len)]
    rows = []
    t0 = time.time()
    for i in range(0, n, batch):
        rows.append(greedy_continuations(target, prompts[i:i + batch], seq_len - prompt_len))
        log(f"pool ({data.split}): {min(i + batch, n)}/{n} windows, {time.time() - t0:.0f} s")
    return torch.cat(rows)


# -- one batch of blocks ----------------------------------------------------------------------------
def block_batch(head: DraftHead, target: Transformer, windows: torch.Tensor, anchors: torch.Tensor):
    """Drafter logits (S, m, k, V) for blocks anchored at ``anchors`` (S, m) of ``windows`` (S, L),
    and their targets (S, m, k): the window's tokens after each anchor."""
    s, length = windows.shape
    m = anchors.shape[1]
    k = head.spec.block_size - 1
    with torch.no_grad():
        outs: list[torch.Tensor] = []
        target.hidden_states(windows, layer_outputs=outs)
    positions = torch.arange(length).expand(s, length)
    context = head.context_kv(head.fuse_features(outs), positions)
    offsets = torch.arange(k + 1)
    block_pos = (anchors[..., None] + offsets).reshape(s, m * (k + 1))
    x = head.block_inputs(target.embed_tokens, windows.gather(1, anchors), k).reshape(s, m * (k + 1), -1)
    # Query of block i sees context positions < anchor_i and the keys of block i.
    block_of_query = torch.arange(m).repeat_interleave(k + 1)
    sees_ctx = torch.arange(length)[None, None, :] < anchors.repeat_interleave(k + 1, dim=1)[:, :, None]
    sees_block = (block_of_query[:, None] == block_of_query[None, :]).expand(s, -1, -1)
    mask = torch.cat([sees_ctx, sees_block], dim=-1)[:, None]
    hidden = head(x, block_pos, context, mask).view(s, m, k + 1, -1)[:, :, 1:]
    logits = target.head(hidden)
    tgt = windows.gather(1, (anchors[..., None] + offsets[1:]).reshape(s, -1)).view(s, m, k)
    return logits, tgt


def weighted_ce(logits: torch.Tensor, tgt: torch.Tensor, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    k = tgt.shape[-1]
    w = torch.exp(-torch.arange(k, dtype=torch.float32) / decay)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    ce = ce.view(*tgt.shape)
    return (ce * w).sum(-1).mean() / w.sum(), ce.detach()


def accepted_run(logits: torch.Tensor, tgt: torch.Tensor, draft_len: int) -> torch.Tensor:
    """Per block, the number of leading drafts (of ``draft_len``) equal to the target's tokens."""
    hit = (logits[..., :draft_len, :].argmax(-1) == tgt[..., :draft_len]).long()
    return hit.cumprod(-1).sum(-1)


def anchors_for(gen: torch.Generator, s: int, m: int, prompt_len: int, length: int, k: int) -> torch.Tensor:
    """Random anchors in [prompt_len - 1, length - 1 - k]: the continuation's targets are the target's own."""
    return torch.randint(prompt_len - 1, length - k, (s, m), generator=gen)


# -- the loop -----------------------------------------------------------------------------------
def train_drafter(run, resume: bool = False, progress: bool = True, log=print, lr_at=None) -> dict:
    """Train the head of ``run`` (a ``training.train.RunConfig`` whose objective is "drafter");
    ``lr_at(step, train_config, elapsed_s)`` is the learning-rate schedule of the training loop."""
    cfg = run.train
    dcfg = DrafterTraining.from_dict(dict(run.source.get("drafter", {})))
    if not cfg.init_from:
        raise ConfigError("train.objective = 'drafter' needs train.init_from: the frozen target model")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target, tokenizer = load_model(cfg.init_from, dtype=torch.float32)
    if not target.config.causal:
        raise ConfigError("a draft head needs a causal target model (train.init_from)")
    target.requires_grad_(False).eval()
    k = dcfg.block_size - 1
    if cfg.seq_len - dcfg.prompt_len <= k:
        raise ConfigError("train.seq_len must exceed drafter.prompt_len by more than block_size - 1")
    torch.manual_seed(cfg.seed)
    head = DraftHead(target.config, dcfg.spec)
    head.reset_parameters(seed=cfg.seed)
    head.train()
    log(f"draft head: {head.num_parameters():,} parameters on {cfg.init_from} (frozen)")

    cpu_start = time.process_time()
    state = {"step": 0, "tokens": 0, "blocks": 0, "elapsed_s": 0.0, "cpu_s": 0.0, "pool_cpu_s": 0.0,
             "best_val": None, "best_step": None, "history": [],
             "config": {"train": dataclasses.asdict(cfg), "drafter": dataclasses.asdict(dcfg)}}
    pool_file = out_dir / "pool.safetensors"
    if pool_file.is_file():
        from safetensors.torch import load_file
        pools = load_file(str(pool_file))
        pool, val_pool = pools["train"], pools["val"]
        if (out_dir / "pool.json").is_file():
            state["pool_cpu_s"] = json.loads((out_dir / "pool.json").read_text()).get("cpu_s", 0.0)
    else:
        p0 = time.process_time()
        pool = build_pool(target, ShardDataset(cfg.data, "train"), dcfg.pool_windows, dcfg.prompt_len,
                          cfg.seq_len, cfg.seed, dcfg.pool_batch, log)
        val_pool = build_pool(target, ShardDataset(cfg.data, "val"), dcfg.val_windows, dcfg.prompt_len,
                              cfg.seq_len, cfg.seed + 1, dcfg.pool_batch, log)
        atomic_save_tensors({"train": pool, "val": val_pool}, pool_file)
        state["pool_cpu_s"] = time.process_time() - p0
        atomic_write_text(out_dir / "pool.json", json.dumps(
            {"windows": pool.shape[0], "val_windows": val_pool.shape[0], "seq_len": cfg.seq_len,
             "prompt_len": dcfg.prompt_len, "generated_tokens": int(pool.shape[0] * (cfg.seq_len - dcfg.prompt_len)),
             "cpu_s": state["pool_cpu_s"]}, indent=2))
    pool_cpu_s = state["pool_cpu_s"]

    decay = [p for n, p in head.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in head.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)
    latest = out_dir / "latest"
    if resume and latest.is_file():
        from safetensors.torch import load_file
        folder = out_dir / "checkpoints" / latest.read_text().strip()
        head.load_state_dict(load_file(str(folder / "model.safetensors")))
        params = dict(head.named_parameters())
        for key, value in load_file(str(folder / "optimizer.safetensors")).items():
            pname, _, skey = key.partition("::")
            opt.state[params[pname]][skey] = value
        state = json.loads((folder / "trainer_state.json").read_text())
        log(f"resumed from step {state['step']} ({state['tokens']:,} tokens)")
    elif resume:
        log(f"no checkpoint in {out_dir}; starting from scratch")
    cpu_before = state["cpu_s"] if state["step"] else pool_cpu_s
    cpu_start = time.process_time()
    session_start, elapsed_before = time.time(), state["elapsed_s"]
    log_file = (out_dir / "log.jsonl").open("a")

    def cpu_seconds() -> float:
        return cpu_before + time.process_time() - cpu_start

    def write_log(record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    def save(folder: Path, with_optimizer: bool) -> None:
        tmp = folder.with_name(".tmp-" + folder.name)
        save_drafter(head, tmp, extra={"trained_on": cfg.init_from, "step": state["step"], "tokens": state["tokens"]})
        if with_optimizer:
            names = {id(p): n for n, p in head.named_parameters()}
            tensors = {f"{names[id(p)]}::{key}": (v if torch.is_tensor(v) else torch.tensor(v))
                       for group in opt.param_groups for p in group["params"]
                       for key, v in opt.state.get(p, {}).items()}
            atomic_save_tensors(tensors, tmp / "optimizer.safetensors")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)

    def checkpoint() -> None:
        state["elapsed_s"] = elapsed_before + time.time() - session_start
        state["cpu_s"] = cpu_seconds()
        root = out_dir / "checkpoints"
        root.mkdir(exist_ok=True)
        save(root / f"step-{state['step']:07d}", True)
        atomic_write_text(latest, f"step-{state['step']:07d}\n")
        for old in sorted(root.glob("step-*"))[:-2]:
            if cfg.keep_every and int(old.name.split("-")[1]) % cfg.keep_every == 0:
                continue  # milestones stay: the acceptance curve against training tokens
            import shutil
            shutil.rmtree(old, ignore_errors=True)

    @torch.no_grad()
    def evaluate() -> float:
        head.eval()
        gen = torch.Generator().manual_seed(12_345)
        total, runs, runs_k, n = 0.0, 0.0, 0.0, 0
        for i in range(0, val_pool.shape[0], cfg.batch_size):
            windows = val_pool[i:i + cfg.batch_size]
            anchors = anchors_for(gen, windows.shape[0], dcfg.blocks_per_window, dcfg.prompt_len, cfg.seq_len, k)
            logits, tgt = block_batch(head, target, windows, anchors)
            loss, _ = weighted_ce(logits, tgt, dcfg.loss_decay)
            total += float(loss) * anchors.numel()
            runs += float(accepted_run(logits, tgt, k).sum())
            runs_k += float(accepted_run(logits, tgt, min(k, dcfg.eval_draft_len)).sum())
            n += anchors.numel()
        head.train()
        val = total / n
        record = {"step": state["step"], "tokens": state["tokens"], "blocks": state["blocks"], "val_loss": val,
                  f"accept_{k}": runs / n, f"accept_{min(k, dcfg.eval_draft_len)}": runs_k / n,
                  "elapsed_s": elapsed_before + time.time() - session_start, "cpu_s": round(cpu_seconds(), 1)}
        state["history"].append(record)
        write_log(record)
        log(f"step {state['step']}: val loss {val:.3f}, accepted per round {runs_k / n:.2f} of "
            f"{min(k, dcfg.eval_draft_len)} ({runs / n:.2f} of {k})")
        if state["best_val"] is None or val < state["best_val"]:
            state["best_val"], state["best_step"] = val, state["step"]
            save(out_dir / "best", False)
        return val

    def stop(signum, frame):  # a background run (nohup, SIGINT ignored) is stopped with SIGTERM: save first
        raise KeyboardInterrupt

    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        if state["step"] == 0:
            evaluate()
        while state["step"] < cfg.max_steps:
            step = state["step"]
            lr = lr_at(step, cfg, elapsed_before + time.time() - session_start)
            for group in opt.param_groups:
                group["lr"] = lr
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step * 2 + 1)
            rows = torch.randint(0, pool.shape[0], (cfg.batch_size,), generator=gen)
            anchors = anchors_for(gen, cfg.batch_size, dcfg.blocks_per_window, dcfg.prompt_len, cfg.seq_len, k)
            logits, tgt = block_batch(head, target, pool[rows], anchors)
            loss, _ = weighted_ce(logits, tgt, dcfg.loss_decay)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower train.lr")
            state["step"] += 1
            state["tokens"] += cfg.batch_size * cfg.seq_len  # target tokens read (context windows)
            state["blocks"] += anchors.numel()
            if state["step"] % cfg.log_every == 0:
                write_log({"step": state["step"], "tokens": state["tokens"], "loss": float(loss.detach()), "lr": lr,
                           "cpu_s": round(cpu_seconds(), 1)})
                if progress:
                    log(f"step {state['step']}/{cfg.max_steps} loss {float(loss.detach()):.3f} cpu {cpu_seconds():.0f} s")
            if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
                evaluate()
            over = cfg.time_limit_minutes and elapsed_before + time.time() - session_start >= cfg.time_limit_minutes * 60
            if state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps or over:
                checkpoint()
            if over:
                log(f"time limit of {cfg.time_limit_minutes} minutes reached at step {state['step']}")
                break
    except KeyboardInterrupt:
        checkpoint()
        log(f"interrupted: checkpoint saved at step {state['step']}; continue with --resume")
        raise
    finally:
        log_file.close()
    state["elapsed_s"] = elapsed_before + time.time() - session_start
    state["cpu_s"] = cpu_seconds()
    return state

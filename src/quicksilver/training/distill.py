"""Self-distillation on trajectories with certainty forcing (dParallel, arXiv 2509.26488).

dParallel makes a masked diffusion model commit many tokens per forward pass by training it on
completions that were decoded for its own prompts, from partially masked states of those completions:
cross-entropy toward the completion's tokens, plus *certainty forcing*, the entropy of
softmax(logits / 0.5) at masked positions whose argmax is already the target, which drives the model
to become confident where it is already right (and only there).  Here, for a block-diffusion model
(``diffusion.block_diffusion_loss``):

1. ``make_trajectories``: windows of the training split are prompts (``prompt_len`` tokens, a
   multiple of the block size, so blocks fall where the decoder puts them); a source model greedily
   continues each for ``gen_len`` tokens (cut at end of text and padded with it, so stopping is
   learned).  The source is any model: the block model itself (self-distillation) or, as the
   bundled recipe does, the AR twin it was adapted from (its greedy continuation is the target the
   block model's one-token-per-step decoding approximates; the twin decodes them ~2x faster).
2. ``distill_loss``: every block of the completion is masked at its own uniformly drawn rate, the
   prompt never; the loss is the mean masked cross-entropy plus ``certainty`` x the certainty-forcing
   entropy.  One [x_t ; x_0] pass trains all blocks (BD3-LM's layout).

Run it as a training objective (``objective = "distill"``, ``configs/coder-tiny-distill.toml``), with
the trainer's checkpoints and exact resume.  Not done from dParallel: its complementary mask pairs.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig
from ..diffusion import LossOutput, block_diffusion_loss, block_times

VAL_SHARE = 0.05  # the last 5% of trajectories are held out for validation


@torch.no_grad()
def make_trajectories(model, tokenizer, data: str | Path, out: str | Path, prompts: int, prompt_len: int,
                      gen_len: int, batch_size: int = 8, seed: int = 0, policy=None, source: str = "",
                      log: Callable[[str], None] = print) -> dict:
    """Decode ``prompts`` training windows with ``model`` and write them as a trajectory file."""
    from safetensors.torch import save_file

    from ..data.shards import ShardDataset
    from ..sampling import DecodePolicy, generate

    train = ShardDataset(data, "train")
    eos = model.config.eos_token_id
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - prompt_len, (prompts,), generator=gen)
    windows = train.tokens[starts[:, None] + torch.arange(prompt_len)]
    if policy is None:
        policy = DecodePolicy(max_new_tokens=gen_len, stop_at_eos=True, early_stop=True, commit="threshold",
                              threshold=0.9, cache="prefix")
    rows, began, tokens_made = [], time.perf_counter(), 0
    for i in range(0, prompts, batch_size):
        chunk = windows[i:i + batch_size].tolist()
        result = generate(model, chunk, policy)
        for prompt, ids in zip(chunk, result.ids):
            ids = list(ids[:gen_len])
            tokens_made += len(ids)
            rows.append(prompt + ids + [eos] * (gen_len - len(ids)))
        log(f"trajectories: {len(rows)}/{prompts} ({tokens_made / (time.perf_counter() - began):.0f} tokens/s)")
    meta = {"prompt_len": prompt_len, "gen_len": gen_len, "prompts": prompts, "seed": seed, "source": source,
            "data": str(data), "policy": policy.describe(), "generated_tokens": tokens_made,
            "seconds": round(time.perf_counter() - began, 1)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": torch.tensor(rows, dtype=torch.int32)}, str(out),
              metadata={"quicksilver": json.dumps(meta)})
    return meta


class TrajectoryDataset:
    """Rows of [prompt | target] from a trajectory file; batches depend only on (seed, step)."""

    def __init__(self, path: str | Path, seq_len: int, split: str, device=None) -> None:
        from safetensors import safe_open

        if not Path(path).is_file():
            raise ConfigError(f"no trajectory file at {path}; write one with `quicksilver trajectories`")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("quicksilver", "{}"))
            rows = f.get_tensor("tokens").long()
        if "prompt_len" not in meta:
            raise ConfigError(f"{path} is not a trajectory file (no prompt_len in its metadata)")
        if rows.shape[1] != seq_len:
            raise ConfigError(f"{path} holds rows of {rows.shape[1]} tokens but train.seq_len = {seq_len}")
        held = max(1, int(len(rows) * VAL_SHARE))
        self.rows = rows[:-held] if split == "train" else rows[-held:]
        self.prompt_len = int(meta["prompt_len"])
        self.meta = meta

    def __len__(self) -> int:  # tokens, as for the corpus (the trainer reports epochs with it)
        return int(self.rows.numel())

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        pick = torch.randint(0, len(self.rows), (batch_size * world_size,), generator=gen)
        return self.rows[pick[rank * batch_size:(rank + 1) * batch_size]], self.prompt_len

    def fixed_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, int]]:
        rows = self.rows[:n_batches * batch_size]
        return [(chunk, self.prompt_len) for chunk in rows.split(batch_size)]


def distill_loss(model, ids: torch.Tensor, prompt_len: int, mcfg: ModelConfig, gen: torch.Generator,
                 first: int, total: int, certainty: float, suffix_share: float = 0.0) -> LossOutput:
    """Mean masked CE toward the trajectory + ``certainty`` x certainty forcing, rows ``first``.. of a
    global batch of ``total`` rows (every draw is made for the whole batch).  ``suffix_share`` of the
    blocks are masked from a uniform cut to their end (left-to-right states), the rest at random."""
    b, n = ids.shape
    block = mcfg.block_size
    device = next(model.parameters()).device
    ids = ids.to(device)
    times = block_times(b, n // block, gen, first, total)
    draws = torch.rand((total, n), generator=gen)[first:first + b]
    if suffix_share > 0:
        blocks = n // block
        suffix = (torch.rand((total, blocks), generator=gen) < suffix_share)[first:first + b]
        cut = torch.randint(0, block, (total, blocks), generator=gen)[first:first + b]
        # A suffix block masks offsets >= cut: its rate is (block - cut) / block and its draws increase
        # toward the block's start, so draw < rate exactly from the cut on.
        rate = (block - cut).float() / block
        offset = torch.arange(n) % block
        ramp = ((block - 1 - offset).float() + 0.5) / block
        times = torch.where(suffix, rate, times)
        draws = torch.where(suffix.repeat_interleave(block, dim=1), ramp[None, :].expand(b, n), draws)
    maskable = (torch.arange(n, device=device) >= prompt_len)[None, :].expand(b, n)
    return block_diffusion_loss(model, ids, mcfg.mask_token_id, mcfg.block_size, times, draws, maskable=maskable,
                                certainty=certainty, weighting="mean")

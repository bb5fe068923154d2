"""Likelihood on held-out text, in bits per byte, for a diffusion model and its AR twin alike.

Both models score the same evenly spaced, non-overlapping windows of the validation split, and the
same tokens in each: tokens 1..L-1 given token 0 (the twin cannot predict a window's first token, so
neither model is asked to).

* **AR twin**: the exact negative log-likelihood, one forward pass per window.
* **Diffusion**: the negative ELBO, an upper bound on the NLL, estimated by Monte Carlo with
  LLaDA's stratified estimator (reference notes 1.9): for sample j of a window with A scored tokens,
  mask exactly c_j of them, where c_j = k + j*A/K (wrapped into 1..A) for a random k, and weight the
  masked cross-entropies by A / c_j.  Its expectation is the continuous-time NELBO of MDLM under the
  linear schedule (the loss the model was trained on); stratifying the mask count over the K samples
  lowers its variance.  The standard error reported is the Monte Carlo one, from the spread of the
  K samples within each window (conservative, since stratified samples are negatively correlated),
  beside the spread over windows (how much a different choice of windows would move the number).

Bits per byte = nats per token x (tokens per byte of the split) / ln 2, with the split's byte and
token counts from the dataset's ``meta.json``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.shards import DatasetError, ShardDataset


def load_windows(data: str | Path, seq_len: int = 256, windows: int = 128, split: str = "val") -> tuple[torch.Tensor, dict]:
    """Evenly spaced non-overlapping windows (W, seq_len) of a split, and the dataset's meta."""
    dataset = ShardDataset(data, split)
    batches = dataset.fixed_batches(windows, 1, seq_len)
    meta = dict(dataset.meta)
    meta["split"] = split
    meta["split_tokens_in_file"] = len(dataset)
    return torch.cat(batches), meta


def tokens_per_byte(meta: dict, split: str = "val") -> float:
    try:
        return meta["tokens"][split] / meta["bytes"][split]
    except (KeyError, TypeError, ZeroDivisionError):
        raise DatasetError(f"the dataset's meta.json lacks token and byte counts for the {split} split") from None


@torch.no_grad()
def ar_nll(model, windows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Exact NLL in nats of tokens 1..L-1 of each window given the tokens before them: (W,)."""
    device = next(model.parameters()).device
    out = []
    for chunk in windows.split(batch_size):
        x = chunk.to(device)
        logits = model(x[:, :-1]).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        out.append(ce.view(x.shape[0], -1).sum(1).cpu())
    return torch.cat(out).double()


def mask_counts(scored: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's stratified mask counts c_1..c_K in [1, scored] for one window."""
    k = int(torch.randint(1, scored + 1, (1,), generator=generator))
    c = torch.tensor([round(k + j * scored / samples) for j in range(samples)], dtype=torch.long)
    return (c - 1) % scored + 1


@torch.no_grad()
def diffusion_nelbo(model, windows: torch.Tensor, samples: int = 16, batch_size: int = 32, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Monte Carlo NELBO terms in nats, shape (W, K): tokens 1..L-1 of each window given token 0."""
    cfg = model.config
    device = next(model.parameters()).device
    w, length = windows.shape
    scored = length - 1
    gen = torch.Generator().manual_seed(seed)
    counts = torch.stack([mask_counts(scored, samples, gen) for _ in range(w)])  # (W, K)
    pairs = [(i, j) for i in range(w) for j in range(samples)]
    out = torch.zeros(w, samples, dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        x0 = torch.stack([windows[i] for i, _ in chunk])
        c = torch.tensor([int(counts[i, j]) for i, j in chunk])
        # Mask exactly c of the scored positions, chosen uniformly: the c smallest of random keys.
        keys = torch.rand(len(chunk), scored, generator=gen)
        rank = keys.argsort(dim=1).argsort(dim=1)
        masked = torch.zeros(len(chunk), length, dtype=torch.bool)
        masked[:, 1:] = rank < c[:, None]
        xt = torch.where(masked, torch.full_like(x0, cfg.mask_token_id), x0)
        hidden = model.hidden_states(xt.to(device))
        if cfg.logits_shift:  # Dream-style: position i is predicted at i - 1 (never i = 0)
            hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        logits = model.head(hidden[masked.to(device)]).float()
        ce = F.cross_entropy(logits, x0[masked].to(device), reduction="none").double().cpu()
        row = torch.arange(len(chunk))[:, None].expand(-1, length)[masked]
        per_row = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, row, ce)
        per_row *= scored / c.double()
        for (i, j), value in zip(chunk, per_row.tolist()):
            out[i, j] = value
        if progress is not None:
            progress(len(chunk))
    return out


def _block_windows(model, windows: torch.Tensor) -> tuple[torch.device, int]:
    """The model's device and block size, once the windows are known to be whole blocks."""
    block = model.config.block_size
    if windows.shape[1] % block:
        raise ValueError(f"window length {windows.shape[1]} is not a multiple of the block size {block}")
    return next(model.parameters()).device, block


def _block_ce_per_row(model, x0: torch.Tensor, masked: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per row of ``x0`` (n, L): the sum over ``masked`` positions of ``weight`` x the cross-entropy of
    the block model's prediction there (one [x_t ; x_0] pass, ``diffusion.block_masked_logits``)."""
    from ..diffusion import block_masked_logits

    device = x0.device
    logits = block_masked_logits(model, x0, masked.to(device), model.config.mask_token_id, model.config.block_size)
    ce = F.cross_entropy(logits, x0[masked.to(device)], reduction="none").double().cpu()
    masked = masked.cpu()
    row = torch.arange(x0.shape[0])[:, None].expand(-1, x0.shape[1])[masked]
    return torch.zeros(x0.shape[0], dtype=torch.float64).index_add_(0, row, ce * weight.cpu()[masked])


@torch.no_grad()
def block_nelbo(model, windows: torch.Tensor, samples: int = 8, batch_size: int = 16, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Monte Carlo block-diffusion NELBO terms in nats (W, K) for a block-causal model (BD3-LM):
    tokens 1..L-1 of each window given token 0, each block an MDLM given the clean blocks before it.

    Sample j of a window draws each block's mask rate stratified, t = (j + u) / K with u ~ U(0, 1)
    per block, masks each scored position with its block's rate and weights the masked
    cross-entropies by 1 / t (the continuous-time NELBO the model was trained on)."""
    device, block = _block_windows(model, windows)
    w, length = windows.shape
    gen = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(w) for j in range(samples)]
    out = torch.zeros(w, samples, dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        x0 = torch.stack([windows[i] for i, _ in chunk]).to(device)
        j = torch.tensor([j for _, j in chunk], dtype=torch.float64)[:, None]
        u = torch.rand(len(chunk), length // block, generator=gen, dtype=torch.float64)
        t = ((j + u) / samples).clamp(min=1e-3).repeat_interleave(block, dim=1)  # (n, L)
        masked = torch.rand(len(chunk), length, generator=gen, dtype=torch.float64) < t
        masked[:, 0] = False
        per_row = _block_ce_per_row(model, x0, masked, 1 / t)
        for (i, jj), value in zip(chunk, per_row.tolist()):
            out[i, jj] = value
        if progress is not None:
            progress(len(chunk))
    return out


@torch.no_grad()
def block_left_to_right_nll(model, windows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Exact NLL in nats (W,) of a block-causal model decoded left to right inside each block: token j
    given the clean blocks before it, the clean positions of its own block before it, and masks after
    it (what ``commit="ordered"`` at threshold 1.0 samples from).  Tokens 1..L-1 given token 0, like
    :func:`ar_nll`, so the two are directly comparable; ``block_size`` passes per batch, one per
    offset inside the block."""
    device, block = _block_windows(model, windows)
    w, length = windows.shape
    offset = torch.arange(length) % block
    out = torch.zeros(w, dtype=torch.float64)
    for start in range(0, w, batch_size):
        x0 = windows[start:start + batch_size].to(device)
        n = x0.shape[0]
        for k in range(block):
            masked = (offset >= k)[None, :].expand(n, length).clone()
            masked[:, 0] = False
            scored = (offset == k).double()[None, :].expand(n, length)  # only offset k counts this pass
            out[start:start + n] += _block_ce_per_row(model, x0, masked, scored)
    return out


def summarise(per_window: torch.Tensor, scored_tokens: int, tpb: float, mc: torch.Tensor | None = None) -> dict:
    """Nats/token and bits/byte with their standard errors.  ``per_window``: (W,) nats;
    ``mc``: (W, K) Monte Carlo terms when the estimate is stochastic."""
    w = per_window.numel()
    total_tokens = w * scored_tokens
    nats_per_token = float(per_window.sum()) / total_tokens
    to_bpb = tpb / math.log(2)
    out = {"windows": w, "scored_tokens": total_tokens, "nats_per_token": nats_per_token,
           "bits_per_byte": nats_per_token * to_bpb}
    per_token = per_window / scored_tokens
    if w > 1:
        se_windows = float(per_token.std(unbiased=True)) / math.sqrt(w)
        out["se_over_windows_bits_per_byte"] = se_windows * to_bpb
    if mc is not None:
        k = mc.shape[1]
        out["samples_per_window"] = k
        if k > 1:
            var_total = float((mc.var(dim=1, unbiased=True) / k).sum())
            se_mc = math.sqrt(var_total) / total_tokens
            out["se_monte_carlo_nats_per_token"] = se_mc
            out["se_monte_carlo_bits_per_byte"] = se_mc * to_bpb
    return out


def run_ppl(system, data: str | Path, seq_len: int = 256, windows: int = 128, samples: int = 16,
            batch_size: int = 32, seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Bits per byte of a local model on the validation split (NELBO for diffusion, NLL for AR)."""
    model = system.model
    x, meta = load_windows(data, seq_len, windows)
    vocab = meta.get("vocab_size")
    if vocab is not None and vocab != model.config.vocab_size:
        raise DatasetError(f"the dataset's vocabulary ({vocab}) does not match the model's ({model.config.vocab_size})")
    tpb = tokens_per_byte(meta)
    base = {"eval": "ppl", "data": str(data), "split": "val", "seq_len": seq_len,
            "tokens_per_byte": tpb, "split_tokens": meta["tokens"]["val"], "split_bytes": meta["bytes"]["val"]}
    if model.config.causal:
        nll = ar_nll(model, x, batch_size)
        if progress is not None:
            progress("score", x.shape[0], x.shape[0])
        return {**base, "estimator": "exact NLL (autoregressive)", **summarise(nll, seq_len - 1, tpb)}
    total = x.shape[0] * samples
    tick = (lambda n: progress("score", n, total)) if progress else None
    if getattr(model.config, "block_size", 0):
        mc = block_nelbo(model, x, samples, max(1, batch_size // 2), seed, progress=tick)
        left = summarise(block_left_to_right_nll(model, x, max(1, batch_size // 2)), seq_len - 1, tpb)
        return {**base, "estimator": f"block-diffusion NELBO upper bound (BD3-LM, block {model.config.block_size}), "
                f"stratified per-block mask rates, {samples} samples per window",
                **summarise(mc.mean(dim=1), seq_len - 1, tpb, mc),
                # exact, for the model read left to right inside its blocks (commit="ordered")
                "left_to_right": {"estimator": "exact NLL, left to right inside each block", **left}}
    mc = diffusion_nelbo(model, x, samples, batch_size, seed, progress=tick)
    return {**base, "estimator": f"NELBO upper bound, LLaDA stratified mask counts, {samples} samples per window",
            **summarise(mc.mean(dim=1), seq_len - 1, tpb, mc)}


__all__ = ["load_windows", "tokens_per_byte", "ar_nll", "mask_counts", "diffusion_nelbo", "block_nelbo",
           "block_left_to_right_nll", "summarise",
           "run_ppl"]

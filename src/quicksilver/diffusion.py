"""The forward (masking) process and the training losses, as pure functions.

Masked diffusion with the linear schedule: at time t each token is independently replaced by
[MASK] with probability p = (1 - eps) t + eps.  The model predicts the clean tokens at masked
positions; the loss weights each masked cross-entropy by 1/p (MDLM's continuous-time NELBO under
the log-linear schedule, which is LLaDA's pre-training loss).  It is an upper bound on the NLL.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-3


def sample_times(batch_size: int, generator: torch.Generator, antithetic: bool = True,
                 eps: float = EPS) -> torch.Tensor:
    """Times t in [eps, 1], one per row.  Antithetic sampling stratifies them across the batch."""
    u = torch.rand(batch_size if not antithetic else 1, generator=generator, dtype=torch.float64)
    if antithetic:
        t = (u / batch_size + torch.arange(batch_size, dtype=torch.float64) / batch_size) % 1.0
    else:
        t = u
    return ((1 - eps) * t + eps).float()


def mask_tokens(x0: torch.Tensor, p: torch.Tensor, mask_id: int, generator: torch.Generator | None,
                maskable: torch.Tensor | None = None,
                draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each token by ``mask_id`` with its row's probability ``p``; returns (xt, masked).

    ``draws`` (uniforms shaped like ``x0``) replaces the generator, e.g. this rank's rows of draws
    made for the whole global batch, so that masks do not depend on how the batch is split."""
    if draws is None:
        draws = torch.rand(x0.shape, generator=generator)
    masked = draws < p.to(draws.device)[:, None]
    if maskable is not None:
        masked &= maskable
    masked = masked.to(x0.device)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


@dataclass
class LossOutput:
    loss: torch.Tensor  # what to back-propagate
    nll_sum: torch.Tensor  # summed weighted CE (diffusion) or CE (AR), for logging, detached
    tokens: int  # tokens the loss is normalised by


def _masked_logits_ce(model, xt, x0, masked, attention_mask=None, positions=None) -> torch.Tensor:
    """Cross-entropy at masked positions only: the LM head runs on those rows alone (saves ~half
    its cost at t ~ U(0,1)).  Returns a flat vector in the order of ``masked.nonzero()``."""
    hidden = model.hidden_states(xt, positions=positions, attention_mask=attention_mask)
    if model.config.logits_shift:
        # Dream-style: the prediction for position i comes from position i - 1.
        hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
    logits = model.head(hidden[masked]).float()
    return F.cross_entropy(logits, x0[masked], reduction="none")


def diffusion_loss(model, x0: torch.Tensor, mask_id: int, generator: torch.Generator | None,
                   antithetic: bool = True, times: torch.Tensor | None = None,
                   draws: torch.Tensor | None = None) -> LossOutput:
    """Pre-training NELBO: sum over masked tokens of CE / p, divided by B * L.

    ``times`` and ``draws`` (see :func:`mask_tokens`) fix the noise instead of the generator."""
    b, n = x0.shape
    p = sample_times(b, generator, antithetic) if times is None else times
    xt, masked = mask_tokens(x0, p, mask_id, generator, draws=draws)
    ce = _masked_logits_ce(model, xt, x0, masked)
    weights = (1.0 / p.to(x0.device))[:, None].expand(b, n)[masked]
    total = (ce * weights).sum()
    return LossOutput(total / (b * n), total.detach(), b * n)


def sft_diffusion_loss(model, x0: torch.Tensor, prompt_lengths: torch.Tensor, mask_id: int,
                       generator: torch.Generator | None, antithetic: bool = True,
                       attention_mask: torch.Tensor | None = None, times: torch.Tensor | None = None,
                       draws: torch.Tensor | None = None) -> LossOutput:
    """SFT: prompts are never masked; answers (EOS padding included) are.  Each masked CE / p is
    divided by its row's answer length; rows are summed and divided by the batch size."""
    b, n = x0.shape
    positions = torch.arange(n, device=x0.device)[None, :]
    answer = positions >= prompt_lengths.to(x0.device)[:, None]
    p = sample_times(b, generator, antithetic) if times is None else times
    xt, masked = mask_tokens(x0, p, mask_id, generator, maskable=answer.cpu(), draws=draws)
    ce = _masked_logits_ce(model, xt, x0, masked, attention_mask=attention_mask)
    answer_len = answer.sum(1).clamp(min=1).float()
    weights = (1.0 / (p.to(x0.device)[:, None] * answer_len[:, None])).expand(b, n)[masked]
    total = (ce * weights).sum()
    return LossOutput(total / b, total.detach(), int(answer.sum()))


def fim_transform(x: torch.Tensor, prefix_id: int, suffix_id: int, middle_id: int,
                  generator: torch.Generator, rate: float = 0.5, row_offset: int = 0,
                  total_rows: int | None = None) -> torch.Tensor:
    """Rewrite a share ``rate`` of rows as prefix-suffix-middle (PSM) fill-in-the-middle examples.

    A chosen row [a | b | c] (cut at two random points, over its first L - 3 tokens) becomes
    [<fim_prefix> a <fim_suffix> c <fim_middle> b], the same length L, so a causal model trained on
    it learns to write the middle after seeing both sides.

    The draws are made for ``total_rows`` rows (the global batch) and rows ``row_offset`` onwards
    are used, so a rank's slice of the batch is transformed exactly as in a one-process run.
    """
    b, n = x.shape
    total = b if total_rows is None else total_rows
    out = x.clone()
    chosen = (torch.rand(total, generator=generator) < rate)[row_offset:row_offset + b]
    cuts = torch.randint(0, n - 3 + 1, (total, 2), generator=generator).sort(dim=1).values[row_offset:row_offset + b]
    for row in chosen.nonzero().flatten().tolist():
        i, j = cuts[row].tolist()
        body = x[row, : n - 3]
        out[row] = torch.cat([
            body.new_tensor([prefix_id]), body[:i],
            body.new_tensor([suffix_id]), body[j:],
            body.new_tensor([middle_id]), body[i:j],
        ])
    return out


def ar_loss(model, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> LossOutput:
    """Next-token cross-entropy (mean over predicted tokens) for the causal twin."""
    logits = model(x[:, :-1], attention_mask=None if attention_mask is None else attention_mask[:, :-1])
    targets = x[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         ignore_index=-100, reduction="sum")
    count = int((targets != -100).sum())
    return LossOutput(ce / max(count, 1), ce.detach(), count)


# -- block diffusion (BD3-LM) ------------------------------------------------------------------
def block_diffusion_layout(length: int, block: int, device=None) -> torch.Tensor:
    """BD3-LM's training mask over the input [x_t ; x_0] of 2 x ``length`` positions, (1, 1, 2L, 2L).

    Blocks are ``block`` positions counted from position 0 in each half.  A noisy query sees its own
    noisy block (bidirectionally) and the *clean* blocks before it; a clean query sees the clean
    blocks up to its own.  So the clean half computes exactly the keys/values a block-causal decoder
    caches for finished blocks, and each noisy block sees what it sees while being decoded."""
    idx = torch.arange(2 * length, device=device)
    clean = idx >= length
    blk = torch.div(idx % length, block, rounding_mode="floor")
    cq, ck = clean[:, None], clean[None, :]
    bq, bk = blk[:, None], blk[None, :]
    own_noisy = ~cq & ~ck & (bq == bk)
    noisy_sees_clean = ~cq & ck & (bq > bk)
    clean_causal = cq & ck & (bq >= bk)
    return (own_noisy | noisy_sees_clean | clean_causal)[None, None]


def block_times(rows: int, blocks: int, generator: torch.Generator, row_offset: int = 0,
                total_rows: int | None = None) -> torch.Tensor:
    """One mask rate per block, (rows, blocks): antithetic over all blocks of the global batch
    (``total_rows`` rows), of which rows ``row_offset`` onwards are returned."""
    total = rows if total_rows is None else total_rows
    t = sample_times(total * blocks, generator).view(total, blocks)
    return t[row_offset:row_offset + rows]


def block_masked_logits(model, x0: torch.Tensor, masked: torch.Tensor, mask_id: int, block: int) -> torch.Tensor:
    """Logits (M, V) at the ``masked`` positions (in ``masked.nonzero()`` order) of a block-causal
    model given x_t = x0 with ``masked`` replaced by the mask id: one pass over [x_t ; x_0] with
    :func:`block_diffusion_layout`.  With ``logits_shift`` position j is read at j - 1 of the noisy
    copy, a block's first position at the last position of the previous clean block (``masked``
    must then exclude position 0)."""
    b, n = x0.shape
    device = x0.device
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    positions = torch.arange(n, device=device).repeat(2)[None, :].expand(b, 2 * n)
    layout = block_diffusion_layout(n, block, device)
    hidden = model.hidden_states(torch.cat([xt, x0], dim=1), positions=positions, layout=layout)
    noisy, clean = hidden[:, :n], hidden[:, n:]
    if getattr(model.config, "logits_shift", False):
        first = (torch.arange(n, device=device) % block == 0)[None, :, None]
        prev_noisy = torch.cat([noisy[:, :1], noisy[:, :-1]], dim=1)
        prev_clean = torch.cat([clean[:, :1], clean[:, :-1]], dim=1)
        noisy = torch.where(first, prev_clean, prev_noisy)
    return model.head(noisy[masked]).float()


def block_diffusion_loss(model, x0: torch.Tensor, mask_id: int, block: int, times: torch.Tensor,
                         draws: torch.Tensor, maskable: torch.Tensor | None = None,
                         certainty: float = 0.0, certainty_temperature: float = 0.5,
                         weighting: str = "elbo") -> LossOutput:
    """Block-diffusion NELBO (BD3-LM): every block is an MDLM conditioned on the clean blocks before it.

    ``times`` (B, L / block): each block's mask rate; ``draws`` (B, L) uniforms (a position is
    masked where draw < its block's rate, and ``maskable``).  One forward pass over [x_t ; x_0] with
    :func:`block_diffusion_layout` trains all blocks at once.  With ``logits_shift`` position j is
    predicted from position j - 1 of the noisy copy, except a block's first position, which is
    predicted from the last position of the previous *clean* block (an AR prediction, what the
    decoder has when the block starts); position 0 is then never masked.

    ``weighting = "elbo"`` weights each masked CE by 1 / rate (the NELBO, normalised by B * L);
    ``"mean"`` averages the CE over masked positions (distillation).  ``certainty`` > 0 adds
    dParallel's certainty forcing (arXiv 2509.26488): that weight times the mean entropy of
    softmax(logits / ``certainty_temperature``) over masked positions whose argmax is already the
    target, so the model grows sure of what it gets right without being pushed toward wrong tokens.
    """
    b, n = x0.shape
    if n % block:
        raise ValueError(f"sequence length {n} is not a multiple of the block size {block}")
    device = x0.device
    p = times.to(device).repeat_interleave(block, dim=1)  # (B, L)
    masked = draws.to(device) < p
    if maskable is not None:
        masked &= maskable.to(device)
    if getattr(model.config, "logits_shift", False):
        masked[:, 0] = False
    logits = block_masked_logits(model, x0, masked, mask_id, block)
    targets = x0[masked]
    ce = F.cross_entropy(logits, targets, reduction="none")
    count = int(masked.sum())
    if weighting == "elbo":
        total = (ce / p[masked]).sum()
        loss, norm = total / (b * n), b * n
    else:
        total = ce.sum()
        loss, norm = total / max(count, 1), count
    if certainty > 0 and count:
        right = logits.argmax(-1) == targets
        if bool(right.any()):
            logp = F.log_softmax(logits[right] / certainty_temperature, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            loss = loss + certainty * entropy.mean()
    return LossOutput(loss, total.detach(), norm)

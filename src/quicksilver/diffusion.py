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

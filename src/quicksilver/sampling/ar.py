"""Autoregressive decoding of the causal twin with a KV cache: one prefill pass over the
(left-padded) prompts, then one forward pass per new token for the whole batch."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..model import KVCache
from . import rules
from .batch import left_pad
from .stops import cut_at_eos, never_sample_ids, stop_tensor
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent


@torch.no_grad()
def generate_ar(model, prompts: list[list[int]], policy: DecodePolicy,
                on_step: Callable[[StepEvent], None] | None = None,
                keep_history: bool = False) -> GenerationResult:
    policy.validate()
    cfg = model.config
    if not cfg.causal:
        raise GenerationError("AR decoding needs a causal model")
    device = next(model.parameters()).device
    gen_len = policy.max_new_tokens
    tokens, attention, positions, width = left_pad(prompts, cfg.pad_token_id, 0, cfg.mask_token_id, device)
    if width + gen_len > cfg.max_position_embeddings:
        raise GenerationError(f"prompt ({width} tokens) plus max_new_tokens ({gen_len}) exceeds the model's "
                              f"context of {cfg.max_position_embeddings} tokens")
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(policy.seed if policy.seed is not None else torch.seed())
    banned = never_sample_ids(cfg)
    stops = stop_tensor(cfg, device)
    b = tokens.shape[0]
    out = torch.full((b, gen_len), cfg.mask_token_id, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    cache = KVCache(cfg.num_hidden_layers)
    next_pos = positions[:, -1] + 1
    history: list[torch.Tensor] | None = [] if keep_history else None
    start_time = time.perf_counter()
    hidden = model.hidden_states(tokens, positions=positions, attention_mask=attention, cache=cache)
    cache.attention_mask = attention  # the prompt's padding; each new token is real
    nfe = 1
    for i in range(gen_len):
        logits = rules.suppress(model.head(hidden[:, -1]).float(), banned)
        if policy.top_k:
            logits = rules.top_k_filter(logits, policy.top_k)
        if policy.top_p < 1:
            logits = rules.top_p_filter(logits, policy.top_p)
        token = rules.sample_tokens(logits, policy.temperature, generator)
        token = torch.where(done, torch.full_like(token, cfg.eos_token_id), token)
        out[:, i] = token
        done |= torch.isin(token, stops)
        if i == 0:
            first_token_seconds = time.perf_counter() - start_time
        if on_step is not None or history is not None:
            region = out.clone()
            if history is not None:
                history.append(region)
            if on_step is not None:
                committed = torch.zeros_like(region, dtype=torch.bool)
                committed[:, i] = True
                on_step(StepEvent(nfe, 0, region, committed, cfg.mask_token_id))
        if (policy.stop_at_eos and bool(done.all())) or i == gen_len - 1:
            break
        new = torch.ones(b, 1, dtype=torch.long, device=device)
        hidden = model.hidden_states(token[:, None], positions=next_pos[:, None], attention_mask=new, cache=cache)
        cache.attention_mask = torch.cat([cache.attention_mask, new], dim=1)
        next_pos = next_pos + 1
        nfe += 1
    seconds = time.perf_counter() - start_time
    ids, finished = [], []
    for row in out.tolist():
        kept, fin = cut_at_eos(row, stops.tolist())
        ids.append([t for t in kept if t != cfg.mask_token_id])
        finished.append(fin)
    return GenerationResult(ids=ids, nfe=nfe, generated_tokens=sum(map(len, ids)),
                            seconds=seconds, finished=finished, history=history,
                            first_token_seconds=first_token_seconds, row_forwards=nfe * b)

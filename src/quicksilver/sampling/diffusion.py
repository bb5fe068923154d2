"""Reference block-wise diffusion decoding (LLaDA's low-confidence remasking).

The canvas is [prompt | mask * max_new_tokens].  Blocks of ``block_length`` positions are decoded
left to right; within a block each step runs the model over the whole canvas (no cache), proposes a
token for every masked position, and commits the most confident ones, as many as the linear
schedule allots to that step.  Committed tokens never change.  Decoding stops after the block in
which every row has committed end of text.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from . import rules
from .batch import cut_at_eos, left_pad
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent


def never_sample_ids(cfg) -> list[int]:
    ids = {cfg.mask_token_id, cfg.pad_token_id, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id}
    ids.discard(cfg.eos_token_id)
    return sorted(i for i in ids if 0 <= i < cfg.vocab_size)


def steps_per_block(policy: DecodePolicy, block_sizes: list[int]) -> list[int]:
    total = sum(block_sizes)
    steps = total if policy.steps is None else policy.steps
    return [max(1, min(size, round(steps * size / total))) for size in block_sizes]


@torch.no_grad()
def generate_diffusion(model, prompts: list[list[int]], policy: DecodePolicy,
                       on_step: Callable[[StepEvent], None] | None = None,
                       keep_history: bool = False) -> GenerationResult:
    policy.validate()
    cfg = model.config
    device = next(model.parameters()).device
    gen_len = policy.max_new_tokens
    canvas, attention, positions, width = left_pad(prompts, cfg.pad_token_id, gen_len, cfg.mask_token_id, device)
    if canvas.shape[1] > cfg.max_position_embeddings:
        raise GenerationError(f"prompt ({width} tokens) plus max_new_tokens ({gen_len}) exceeds the model's "
                              f"context of {cfg.max_position_embeddings} tokens")
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(policy.seed if policy.seed is not None else torch.seed())
    banned = never_sample_ids(cfg)
    b = canvas.shape[0]
    block_starts = list(range(0, gen_len, policy.block_length))
    block_sizes = [min(policy.block_length, gen_len - s) for s in block_starts]
    plan = steps_per_block(policy, block_sizes)
    history: list[torch.Tensor] | None = [] if keep_history else None
    nfe = 0
    start_time = time.perf_counter()
    for block, (start, size, n_steps) in enumerate(zip(block_starts, block_sizes, plan)):
        lo, hi = width + start, width + start + size
        counts = rules.transfer_counts(size, n_steps)
        for count in counts:
            hidden = model.hidden_states(canvas, positions=positions, attention_mask=attention)
            logits = model.head(hidden[:, lo:hi]).float()
            nfe += 1
            logits = rules.suppress(logits, banned)
            if policy.top_k:
                logits = rules.top_k_filter(logits, policy.top_k)
            if policy.top_p < 1:
                logits = rules.top_p_filter(logits, policy.top_p)
            proposal = rules.sample_tokens(logits, policy.temperature, generator)
            scores = rules.confidence(logits, proposal)
            masked = canvas[:, lo:hi] == cfg.mask_token_id
            chosen = rules.commit_top(scores, masked, torch.full((b,), count, device=device))
            canvas[:, lo:hi] = torch.where(chosen, proposal, canvas[:, lo:hi])
            if on_step is not None or history is not None:
                region = canvas[:, width:].clone()
                if history is not None:
                    history.append(region)
                if on_step is not None:
                    committed = torch.zeros_like(region, dtype=torch.bool)
                    committed[:, start:start + size] = chosen
                    on_step(StepEvent(nfe, block, region, committed, cfg.mask_token_id))
        if policy.stop_at_eos and bool((canvas[:, width:hi] == cfg.eos_token_id).any(dim=1).all()):
            break
    seconds = time.perf_counter() - start_time
    ids, finished = [], []
    for row in canvas[:, width:].tolist():
        kept, done = cut_at_eos(row, cfg.eos_token_id)
        kept = [t for t in kept if t != cfg.mask_token_id]  # only possible past an early stop
        ids.append(kept)
        finished.append(done)
    return GenerationResult(ids=ids, texts=[], nfe=nfe, generated_tokens=sum(map(len, ids)),
                            seconds=seconds, finished=finished, history=history)


__all__ = ["generate_diffusion", "steps_per_block", "never_sample_ids"]

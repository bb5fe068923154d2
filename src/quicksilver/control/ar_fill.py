"""Constrained decoding of a template by the causal (AR) twin, from the same ``Layout`` as diffusion.

Left to right with a KV cache.  Fixed parts are never sampled: their tokens are queued and fed with
the next forward pass, so a run of fixed tokens (``", "age": ``) costs no pass of its own — it rides
along, as one multi-token cached pass, with the token sampled before it.  A slot's tokens are sampled
under the slot's allowed set; where the slot may end, the first token of the fixed part after it is
allowed too, and sampling it ends the slot (that token is then fed as part of the fixed run).  A
choice slot walks a trie of its token sequences: where only one continuation is left it is forced
without a pass.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..model import KVCache
from ..sampling import rules
from ..sampling.diffusion import never_sample_ids
from ..sampling.types import DecodePolicy, GenerationError, StepEvent
from .fill import FillResult, _full
from .template import Layout


@torch.no_grad()
def fill_ar(model, prompt: list[int], lay: Layout, policy: DecodePolicy,
            on_step: Callable[[StepEvent], None] | None = None) -> FillResult:
    cfg = model.config
    if not cfg.causal:
        raise GenerationError("constrained AR decoding needs a causal model")
    policy.validate()
    start_time = time.perf_counter()
    device = next(model.parameters()).device
    vocab = cfg.vocab_size
    if len(prompt) + len(lay.ids) > cfg.max_position_embeddings:
        raise GenerationError(f"the prompt and template need {len(prompt) + len(lay.ids)} tokens, more than the "
                              f"model's context of {cfg.max_position_embeddings}")
    base = torch.ones(vocab, dtype=torch.bool)
    base[never_sample_ids(cfg)] = False
    base[cfg.eos_token_id] = False
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator().manual_seed(policy.seed if policy.seed is not None else 0)
    cache = KVCache(cfg.num_hidden_layers)
    state = {"pos": 0, "nfe": 0, "last": None}
    region = list(lay.ids)

    def feed(ids: list[int]) -> None:
        x = torch.tensor(ids, dtype=torch.long, device=device)[None]
        pos = torch.arange(state["pos"], state["pos"] + len(ids), device=device)[None]
        hidden = model.hidden_states(x, positions=pos, cache=cache)
        state["pos"] += len(ids)
        state["nfe"] += 1
        state["last"] = model.head(hidden[0, -1]).float().cpu()

    def pick(options: torch.Tensor) -> int:
        logits = state["last"].masked_fill(~options, float("-inf"))
        if policy.top_k:
            logits = rules.top_k_filter(logits, policy.top_k)
        if policy.top_p < 1:
            logits = rules.top_p_filter(logits, policy.top_p)
        return int(rules.sample_tokens(logits[None], policy.temperature, generator)[0])

    def report(place, i: int) -> None:
        if on_step is not None:
            committed = torch.zeros(1, len(region), dtype=torch.bool)
            committed[0, place.start + i] = True
            on_step(StepEvent(state["nfe"], 0, torch.tensor(region)[None], committed, cfg.mask_token_id))

    pending = list(prompt) or [cfg.eos_token_id]  # an empty prompt starts from end of text
    values: list[list[int]] = []
    k = 0
    for part_index, part in enumerate(lay.template.parts):
        if not hasattr(part, "budget"):
            pending.extend(lay.fixed_ids[part_index])
            continue
        place = lay.places[k]
        follow = lay.next_fixed(k)
        end_tok = follow[0] if follow else cfg.eos_token_id
        tokens: list[int] = []
        slot = part
        if slot.choices is not None:
            live = [c for c in slot.choices]
            while True:
                i = len(tokens)
                nexts = sorted({c[i] for c in live if len(c) > i})
                can_end = any(len(c) == i for c in live)
                if not nexts:
                    break
                if len(nexts) == 1 and not can_end:
                    token = nexts[0]  # forced: no pass
                else:
                    if pending:
                        feed(pending)
                        pending = []
                    options = torch.zeros(vocab, dtype=torch.bool)
                    options[nexts] = True
                    if can_end:
                        options[end_tok] = True
                    token = pick(options)
                    if can_end and token == end_tok and end_tok not in nexts:
                        break
                tokens.append(token)
                pending.append(token)
                region[place.start + i] = token
                report(place, i)
                live = [c for c in live if len(c) > i and c[i] == token]
        else:
            first, rest = _full(slot.first, vocab, base), _full(slot.rest, vocab, base)
            for i in range(slot.budget):
                if pending:
                    feed(pending)
                    pending = []
                options = (first if i == 0 else rest).clone()
                ending = slot.can_end(i) and not bool(options[end_tok])
                if ending:
                    options[end_tok] = True
                token = pick(options)
                if ending and token == end_tok:
                    break
                tokens.append(token)
                pending.append(token)
                region[place.start + i] = token
                report(place, i)
        for j in range(len(tokens), place.slot.budget):
            region[place.start + j] = cfg.eos_token_id
        values.append(tokens)
        k += 1
    return FillResult(values, state["nfe"], time.perf_counter() - start_time, region)


__all__ = ["fill_ar"]

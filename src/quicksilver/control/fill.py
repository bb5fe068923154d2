"""Diffusion decoding of a template canvas: the fixed parts are never sampled, the slots are.

The canvas is ``[prompt | template]`` with mask ids at slot positions.  Each step runs the model
over the whole canvas (the fixed template tokens are read as context, both left and right of a
slot, but never predicted), and proposes a token for every masked slot position under that
position's allowed set (the slot's ``first``/``rest`` tokens, plus the end marker where the slot may
end).  A choice slot (enum, boolean) is one unit: each of its token sequences is scored by the mean
log-probability of its tokens at the slot's positions and the best (or a sample, at temperature > 0)
is written as a whole.  Units (free positions and choice slots) are decoded in blocks of
``policy.block_length`` units, left to right, and within a block the policy's commit rule picks
which proposals to keep (the linear schedule of ``steps``, or the threshold / factor rules on the
renormalised probability; the entropy rule is read as the threshold rule here).

End of a slot: the end marker is end of text.  When a slot commits it at position i, positions
after i are set to it too (committed at once, no pass spent on them) and dropped from the value.

Forward passes therefore scale with the slot positions, not with the template's length: fixed
keys, quotes and braces cost nothing but context.

Correction while refining (``policy.correct``, ``sampling/correction.py``): with "remask" each step
also re-scores the block's committed free positions and swaps the weakest for surer proposals (same
passes); with "edit", up to ``edit_passes`` extra passes after a block is full replace committed tokens
the model now prefers to change.  Only free positions the decoder committed are touched: never the
prompt, a fixed part, a choice slot or an end marker.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..sampling import correction, rules
from ..sampling.diffusion import never_sample_ids
from ..sampling.types import DecodePolicy, GenerationError, StepEvent
from .template import Layout, cut_at_end


@dataclass
class FillResult:
    values: list[list[int]]  # per slot: its tokens, cut at the end marker
    nfe: int
    seconds: float
    canvas: list[int]  # the final template region (end markers included)


def _full(mask: torch.Tensor | None, vocab: int, base: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return base.clone()
    out = torch.zeros(vocab, dtype=torch.bool)
    n = min(vocab, mask.numel())
    out[:n] = mask[:n]
    return out & base


def allowed_matrix(lay: Layout, cfg) -> torch.Tensor:
    """(template length, vocab) bool: what each slot position may hold (end marker included where the
    slot may end); fixed positions get an all-False row."""
    vocab = cfg.vocab_size
    end = cfg.eos_token_id
    base = torch.ones(vocab, dtype=torch.bool)
    base[never_sample_ids(cfg)] = False
    base[end] = False
    allow = torch.zeros(len(lay.ids), vocab, dtype=torch.bool)
    for place in lay.places:
        slot = place.slot
        if slot.choices is not None:
            continue
        first, rest = _full(slot.first, vocab, base), _full(slot.rest, vocab, base)
        for i in range(slot.budget):
            row = (first if i == 0 else rest).clone()
            if slot.can_end(i):
                row[end] = True
            if not row.any():
                raise GenerationError(f"a {slot.kind} slot has no token this vocabulary allows")
            allow[place.start + i] = row
    return allow


@torch.no_grad()
def fill_diffusion(model, prompt: list[int], lay: Layout, policy: DecodePolicy,
                   on_step: Callable[[StepEvent], None] | None = None) -> FillResult:
    """Fill every slot of ``lay`` after ``prompt`` with a bidirectional model; see the module doc."""
    cfg = model.config
    if cfg.causal:
        raise GenerationError("template filling by diffusion needs a bidirectional model")
    policy.validate()
    start_time = time.perf_counter()
    device = next(model.parameters()).device
    end = cfg.eos_token_id
    width = len(prompt) + len(lay.ids)
    if width > cfg.max_position_embeddings:
        raise GenerationError(f"the prompt and template need {width} tokens, more than the model's context of "
                              f"{cfg.max_position_embeddings}")
    canvas = torch.tensor(list(prompt) + list(lay.ids), dtype=torch.long)
    off = len(prompt)
    allow = allowed_matrix(lay, cfg)
    # Units in canvas order: ("pos", canvas index, allowed row) or ("choice", place).
    units: list[tuple] = []
    for place in lay.places:
        if place.slot.choices is not None:
            units.append(("choice", place))
        else:
            units.extend(("pos", off + place.start + i, place) for i in range(place.slot.budget))
    done = [False] * len(units)
    unit_of_pos = {u[1]: k for k, u in enumerate(units) if u[0] == "pos"}
    block = max(1, policy.block_length)
    blocks = [list(range(lo, min(lo + block, len(units)))) for lo in range(0, len(units), block)]
    total_steps = len(units) if policy.steps is None else policy.steps
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator().manual_seed(policy.seed if policy.seed is not None else 0)
    positions = torch.arange(width, device=device)[None]
    nfe = 0
    remask = policy.correct in ("remask", "both")
    edit = policy.correct in ("edit", "both")
    propagated: set[int] = set()  # units set to the end marker because an earlier position ended the slot

    def run() -> torch.Tensor:
        nonlocal nfe
        hidden = model.hidden_states(canvas[None].to(device), positions=positions)[0]
        if getattr(cfg, "logits_shift", False):
            hidden = torch.cat([hidden[:1], hidden[:-1]], dim=0)
        nfe += 1
        return hidden

    def logits_for(hidden: torch.Tensor, wanted: list[int]) -> dict[int, torch.Tensor]:
        if not wanted:
            return {}
        return dict(zip(wanted, model.head(hidden[torch.tensor(wanted, device=device)]).float().cpu()))

    def correctable(members: list[int]) -> list[int]:
        """Committed free positions of the block that correction may touch (no end markers, no choices)."""
        return [k for k in members if done[k] and units[k][0] == "pos" and k not in propagated
                and int(canvas[units[k][1]]) != end]

    def current(logits: torch.Tensor, pos: int, token: int) -> float:
        return float(logits.masked_fill(~allow[pos - off], float("-inf")).softmax(-1)[token])

    def report(b_index: int, changed: torch.Tensor) -> None:
        if on_step is not None:
            on_step(StepEvent(nfe, b_index, canvas[off:][None].clone(), changed[None], cfg.mask_token_id))

    for b_index, members in enumerate(blocks):
        n_steps = max(1, min(len(members), round(total_steps * len(members) / max(1, len(units)))))
        schedule = rules.transfer_counts(len(members), n_steps)
        step = 0
        while True:
            open_units = [k for k in members if not done[k]]
            if not open_units:
                break
            hidden = run()
            fixed_old = correctable(members) if remask else []
            wanted = sorted({units[k][1] for k in open_units + fixed_old if units[k][0] == "pos"} |
                            {off + units[k][1].start + i for k in open_units if units[k][0] == "choice"
                             for i in range(units[k][1].slot.budget)})
            logits_at = logits_for(hidden, wanted)
            proposals: dict[int, list[int]] = {}
            scores = torch.full((len(open_units),), float("-inf"))
            for j, k in enumerate(open_units):
                unit = units[k]
                if unit[0] == "pos":
                    logits = logits_at[unit[1]].masked_fill(~allow[unit[1] - off], float("-inf"))
                    if policy.top_k:
                        logits = rules.top_k_filter(logits, policy.top_k)
                    if policy.top_p < 1:
                        logits = rules.top_p_filter(logits, policy.top_p)
                    token = int(rules.sample_tokens(logits[None], policy.temperature, generator)[0])
                    scores[j] = float(logits.softmax(-1)[token])
                    proposals[k] = [token]
                else:
                    place = unit[1]
                    base = off + place.start
                    logp = [logits_at[base + i].log_softmax(-1) for i in range(place.slot.budget)]
                    value = torch.tensor([sum(float(logp[i][t]) for i, t in enumerate(c)) / len(c)
                                          for c in place.slot.choices])
                    pick = int(rules.sample_tokens(value[None], policy.temperature, generator)[0])
                    scores[j] = float(value.softmax(-1)[pick])
                    choice = place.slot.choices[pick]
                    proposals[k] = choice + [end] * (place.slot.budget - len(choice))
            candidates = torch.ones(1, len(open_units), dtype=torch.bool)
            if policy.commit == "fixed":
                count = torch.tensor([schedule[min(step, len(schedule) - 1)]])
                chosen = rules.commit_top(scores[None], candidates, count)[0]
            elif policy.commit == "factor":
                chosen = rules.commit_factor(scores[None], candidates, policy.factor)[0]
            else:
                chosen = rules.commit_threshold(scores[None], candidates, policy.threshold)[0]
            changed = torch.zeros(len(lay.ids), dtype=torch.bool)
            if fixed_old:
                # Remasking: weak committed tokens swap with surer proposals (free positions only).
                if policy.commit == "fixed":
                    budget = correction.reopen_budget(policy.remask_share, len(fixed_old), step, n_steps)
                else:
                    last = int(chosen.sum()) >= len(open_units)
                    budget = 0 if last else int(policy.remask_share * len(open_units) / len(members) * len(fixed_old))
                old = torch.tensor([current(logits_at[units[k][1]], units[k][1], int(canvas[units[k][1]]))
                                    for k in fixed_old])
                free = torch.tensor([units[k][0] == "pos" for k in open_units])
                swapped, reopen = correction.swap_weakest(scores.masked_fill(~free, float("-inf")), chosen, old, budget)
                chosen = swapped
                for k, back in zip(fixed_old, reopen.tolist()):
                    if back:
                        canvas[units[k][1]] = cfg.mask_token_id
                        done[k] = False
                        changed[units[k][1] - off] = True
            for j, k in enumerate(open_units):
                if not bool(chosen[j]):
                    continue
                unit = units[k]
                done[k] = True
                if unit[0] == "choice":
                    base = off + unit[1].start
                    canvas[base:base + unit[1].slot.budget] = torch.tensor(proposals[k])
                    changed[base - off:base - off + unit[1].slot.budget] = True
                    continue
                pos, place = unit[1], unit[2]
                canvas[pos] = proposals[k][0]
                changed[pos - off] = True
                if proposals[k][0] == end:  # the slot ends here: its later positions are dropped
                    for later in range(pos + 1, off + place.start + place.slot.budget):
                        if not done[unit_of_pos[later]]:
                            canvas[later] = end
                            changed[later - off] = True
                            done[unit_of_pos[later]] = True
                            propagated.add(unit_of_pos[later])
            step += 1
            report(b_index, changed)
        if edit:
            # Token-to-token editing: the block is full; replace what the model is now sure is wrong.
            for _ in range(policy.edit_passes):
                touchable = correctable(members)
                if not touchable:
                    break
                hidden = run()
                logits_at = logits_for(hidden, [units[k][1] for k in touchable])
                changed = torch.zeros(len(lay.ids), dtype=torch.bool)
                for k in touchable:
                    pos = units[k][1]
                    row = allow[pos - off].clone()
                    row[end] = False  # editing never ends or reopens a slot
                    probs = logits_at[pos].masked_fill(~row, float("-inf")).softmax(-1)
                    best = int(probs.argmax())
                    if bool(correction.edits(canvas[pos], torch.tensor(best), probs[best], policy.edit_threshold)):
                        canvas[pos] = best
                        changed[pos - off] = True
                report(b_index, changed)
                if not bool(changed.any()):
                    break
    region = canvas[off:].tolist()
    values = [cut_at_end(region[p.start:p.start + p.slot.budget], end) for p in lay.places]
    return FillResult(values, nfe, time.perf_counter() - start_time, region)


__all__ = ["FillResult", "fill_diffusion", "allowed_matrix"]

"""Canvas templates: fixed text with masked slots, the shared form of structured output and edits.

A ``Template`` is a sequence of parts: ``Fixed`` text (copied to the output byte for byte, never
sampled) and ``Slot``s (positions the model fills).  A slot has a token budget and rules:

* ``first`` / ``rest``: the tokens allowed at its first position and at the others (None = any
  token the sampler may produce);
* ``min_len``: positions before which the slot may not end; ``may_end``: whether it may end before
  its budget.  A slot that ends early is cut at its first end marker (``End``) and the positions after
  it are dropped;
* ``choices``: instead of free tokens, one of a few token sequences (enum values, true/false) is
  chosen as a whole.

``layout`` turns a template into token ids for one tokenizer: the fixed parts are tokenized piece by
piece (a piece's tokens decode to exactly its text, so the output keeps every fixed byte) and each
slot becomes ``budget`` mask positions.  Both decoders (``fill.py`` for diffusion, ``ar_fill.py`` for
the causal twin) consume a ``Layout``; ``Layout.render`` turns filled slots back into text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Fixed:
    text: str


@dataclass
class Slot:
    budget: int
    first: torch.Tensor | None = None  # (vocab,) bool: tokens allowed at the first position; None = any
    rest: torch.Tensor | None = None  # tokens allowed at later positions; None = any
    min_len: int = 0  # the slot may not end before this many tokens
    may_end: bool = True  # may end before its budget (trailing positions dropped)
    choices: list[list[int]] | None = None  # choose one of these token sequences as a whole
    kind: str = "text"  # for messages and the playground: "string", "integer", "enum", "text", ...

    def allowed(self, index: int) -> torch.Tensor | None:
        return self.first if index == 0 else self.rest

    def can_end(self, index: int) -> bool:
        """May the slot end at position ``index`` (i.e. have ``index`` tokens)?"""
        return self.may_end and index >= self.min_len


@dataclass
class Template:
    parts: list[Fixed | Slot] = field(default_factory=list)

    def add(self, part: Fixed | Slot) -> "Template":
        if isinstance(part, Fixed) and self.parts and isinstance(self.parts[-1], Fixed):
            self.parts[-1] = Fixed(self.parts[-1].text + part.text)  # one piece: fewer, longer runs
        elif not (isinstance(part, Fixed) and not part.text):
            self.parts.append(part)
        return self

    @property
    def slots(self) -> list[Slot]:
        return [p for p in self.parts if isinstance(p, Slot)]


@dataclass
class SlotPlace:
    slot: Slot
    start: int  # offset in ``Layout.ids``
    index: int  # which slot


@dataclass
class Layout:
    """A template as token ids: ``ids`` has ``mask_id`` at slot positions."""
    template: Template
    ids: list[int]
    places: list[SlotPlace]
    fixed_ids: list[list[int]]  # per part: its token ids (fixed parts) or [] (slots)
    mask_id: int

    @property
    def slot_positions(self) -> int:
        return sum(p.slot.budget for p in self.places)

    @property
    def fixed_positions(self) -> int:
        return len(self.ids) - self.slot_positions

    def render(self, values: list[list[int]], decode) -> str:
        """The output text: fixed parts verbatim, each slot's tokens (already cut at its end) decoded."""
        out, k = [], 0
        for part in self.template.parts:
            if isinstance(part, Fixed):
                out.append(part.text)
            else:
                out.append(decode(values[k]))
                k += 1
        return "".join(out)

    def next_fixed(self, slot_index: int) -> list[int]:
        """Token ids of the fixed part right after slot ``slot_index`` ([] if another slot or the end follows)."""
        k = -1
        for i, part in enumerate(self.template.parts):
            if isinstance(part, Slot):
                k += 1
                if k == slot_index:
                    return self.fixed_ids[i + 1] if i + 1 < len(self.fixed_ids) else []
        return []


def layout(template: Template, encode, mask_id: int) -> Layout:
    ids: list[int] = []
    places: list[SlotPlace] = []
    fixed_ids: list[list[int]] = []
    for part in template.parts:
        if isinstance(part, Fixed):
            piece = encode(part.text)
            fixed_ids.append(piece)
            ids.extend(piece)
        else:
            if part.budget <= 0:
                raise ValueError("a slot needs a positive token budget")
            places.append(SlotPlace(part, len(ids), len(places)))
            fixed_ids.append([])
            ids.extend([mask_id] * part.budget)
    return Layout(template, ids, places, fixed_ids, mask_id)


def cut_at_end(tokens: list[int], end_id: int) -> list[int]:
    """A slot's value: its tokens up to its first end marker."""
    return tokens[:tokens.index(end_id)] if end_id in tokens else tokens


__all__ = ["Fixed", "Slot", "Template", "Layout", "SlotPlace", "layout", "cut_at_end"]

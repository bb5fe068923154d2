"""Structured output end to end: schema → template → layout → fill (diffusion or AR) → text → validated.

Used by ``api.LM.generate_json`` and, through the backend, by the server's ``response_format`` and
``tools``.  The same compiled template drives both model kinds, so their outputs have the same shape.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..sampling.types import DecodePolicy, GenerationError, StepEvent
from .ar_fill import fill_ar
from .fill import fill_diffusion
from .schema import Budgets, SchemaError, check_schema, compile_schema, validate_output
from .template import Layout, layout
from .vocab import token_classes


class InvalidOutput(GenerationError):
    """An output that failed validation against its schema (a bug of the compiler: never expected)."""


@dataclass
class StructuredResult:
    text: str
    value: object
    nfe: int
    seconds: float
    tokens: int  # tokens of the whole output (fixed + filled)
    slot_tokens: int  # tokens the model chose
    fixed_tokens: int  # template tokens written without sampling

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def compile_layout(schema, tokenizer, cfg, budgets: Budgets | None = None) -> Layout:
    """Check and compile ``schema`` for this tokenizer/model; raises ``SchemaError``."""
    check_schema(schema)
    banned = [cfg.mask_token_id, cfg.pad_token_id, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id,
              cfg.eos_token_id]
    classes = token_classes(tokenizer, banned)
    template = compile_schema(schema, classes, tokenizer.encode, budgets)
    return layout(template, tokenizer.encode, cfg.mask_token_id)


def display_ids(lay: Layout, region: list[int], end_id: int) -> list[int]:
    """The template region as a stream of ids: a slot's positions after its end marker are dropped
    (still-masked positions stay mask ids), so the ids before the first mask are final text."""
    out: list[int] = []
    places = {p.start: p for p in lay.places}
    i = 0
    while i < len(region):
        place = places.get(i)
        if place is None:
            out.append(region[i])
            i += 1
            continue
        chunk = region[i:i + place.slot.budget]
        out.extend(chunk[:chunk.index(end_id)] if end_id in chunk else chunk)
        i += place.slot.budget
    return out


def fill_layout(model, tokenizer, prompt: list[int], lay: Layout, policy: DecodePolicy,
                on_step: Callable[[StepEvent], None] | None = None):
    """Fill ``lay`` with whichever decoder fits the model; returns (text, FillResult)."""
    fill = fill_ar if model.config.causal else fill_diffusion
    result = fill(model, prompt, lay, policy, on_step)
    return lay.render(result.values, tokenizer.decode), result


def generate_structured(model, tokenizer, prompt: list[int], schema, policy: DecodePolicy,
                        budgets: Budgets | None = None, lay: Layout | None = None,
                        on_step: Callable[[StepEvent], None] | None = None) -> StructuredResult:
    lay = lay or compile_layout(schema, tokenizer, model.config, budgets)
    text, result = fill_layout(model, tokenizer, prompt, lay, policy, on_step)
    try:
        value = validate_output(text, schema)
    except Exception as e:  # json.JSONDecodeError (a ValueError) or jsonschema.ValidationError
        raise InvalidOutput(f"the output failed validation against the schema ({type(e).__name__}: "
                            f"{str(e).splitlines()[0]}); please report this schema") from None
    slot_tokens = sum(map(len, result.values))
    return StructuredResult(text=text, value=value, nfe=result.nfe, seconds=result.seconds,
                            tokens=slot_tokens + lay.fixed_positions, slot_tokens=slot_tokens,
                            fixed_tokens=lay.fixed_positions)


__all__ = ["StructuredResult", "InvalidOutput", "compile_layout", "fill_layout", "generate_structured",
           "display_ids", "SchemaError", "Budgets"]

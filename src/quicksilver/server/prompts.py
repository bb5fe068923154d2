"""The ``prompt`` of ``/v1/completions`` in every shape the OpenAI API allows, as token-id lists.

OpenAI's completions take a string, a list of strings, a list of token ids, or a list of lists of
token ids; evaluation harnesses send the last three (lm-evaluation-harness tokenizes with the
server's ``/tokenize`` and batches several prompts in one request).  Two steps:

* ``check_prompt_shape`` (in the request schema): the value has one of those shapes; anything else
  is refused with one sentence that names the shapes, not one error per union member;
* ``prompt_ids`` (in the route, with the model at hand): each prompt as token ids, strings encoded
  by the model's tokenizer, ids checked against its vocabulary.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import APIError

SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"

PROMPT_JSON_SCHEMA = {"anyOf": [
    {"type": "string"},
    {"type": "array", "items": {"type": "string"}, "minItems": 1},
    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
    {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
     "minItems": 1},
]}


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", type(None): "null",
             list: "a list"}
    return names.get(type(value), "a value of another type")


def check_prompt_shape(value: Any) -> str | list:
    """``value`` if it has one of the four shapes; else ``ValueError`` with a plain sentence."""
    if isinstance(value, str) or _is_ids(value):
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be {SHAPES}, not {_kind(value)}")
    if not value:
        raise ValueError(f"must be {SHAPES}; it is an empty list")
    if all(isinstance(p, str) for p in value) or all(_is_ids(p) for p in value):
        return value
    if all(isinstance(p, (int, float)) for p in value):  # ids with a float or a boolean among them
        raise ValueError("must hold token ids as whole numbers (a list of integers)")
    bad = next((p for p in value if not (isinstance(p, str) or _is_ids(p))), None)
    if bad is None:
        raise ValueError(f"must be {SHAPES}, not a list that mixes strings and token-id lists")
    what = "a list that is not token ids" if isinstance(bad, list) else _kind(bad)
    raise ValueError(f"must be {SHAPES}; it is a list holding {what}")


def split_prompts(value: str | list) -> list[str | list[int]]:
    """The prompts a checked ``prompt`` holds: one for a string or a list of ids, else one per item."""
    if isinstance(value, str) or _is_ids(value):
        return [value]
    return list(value)


def prompt_ids(prompt: str | list[int], backend, index: int, count: int,
               encode: Callable[[str], list[int]] | None = None) -> list[int]:
    """One prompt as token ids for ``backend`` (text through ``encode``, default ``backend.encode``);
    ids outside its vocabulary are a 400."""
    where = "prompt" if count == 1 else f"prompt[{index}]"
    if isinstance(prompt, str):
        return (encode or backend.encode)(prompt)
    vocab = getattr(backend, "vocab_size", None)
    if vocab is not None:
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"{where} holds token id {bad}, outside this model's vocabulary (0 to {vocab - 1})",
                           "prompt")
    return list(prompt)


__all__ = ["SHAPES", "PROMPT_JSON_SCHEMA", "check_prompt_shape", "split_prompts", "prompt_ids"]

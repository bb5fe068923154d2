"""JSON schema → canvas template (``template.Template``), and validation of what comes back.

What is fixed and what the model fills:

* objects: braces, keys, colons and commas are fixed; **every property is included**, required or
  optional (the template has one shape, so both decoders fill the same canvas; an optional
  property present with a valid value is valid).  ``additionalProperties`` is allowed in any form:
  no extra property is ever generated.
* arrays: brackets and commas fixed; **the item count is fixed at compile time** to
  ``max(minItems, min(maxItems, 2))`` (``DEFAULT_ITEMS`` = 2 when unbounded), each item compiled from
  ``items``.
* strings: the quotes fixed, a slot of ``string_tokens`` string-safe tokens that may end early (an
  empty string is valid).
* integers: a slot whose first token is a digit run without a leading zero, later tokens digit runs,
  ending at any point after the first (so only positive integers are written; JSON forbids leading zeros).  numbers: such an integer, a fixed ``.``
  and a slot of digit runs (at least one), so the value always parses.
* enum / boolean: a choice slot, one of the JSON-encoded values as a whole (``const``: fixed).
* null: fixed ``null``.  ``anyOf``/``oneOf`` of one schema and ``{"type": "null"}`` (how pydantic
  writes ``Optional``) and a type list with ``"null"`` compile to the non-null schema.  Local
  ``$ref`` (``#/$defs/...``, ``#/definitions/...``) is followed (not recursively).

Anything else that would constrain a value (``pattern``, ``minimum``, ``maxLength``, ``allOf``, …)
is refused with ``SchemaError`` naming the keyword: the server answers 400, the CLI exits 2.  Every
output is validated with ``jsonschema`` before it is returned (``validate_output``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .template import Fixed, Slot, Template
from .vocab import TokenClasses

DEFAULT_ITEMS = 2
MAX_ITEMS = 16
MAX_DEPTH = 8
MAX_SLOTS = 256

# Keywords that only annotate, or that the fixed-shape template always satisfies.
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly", "$defs", "definitions", "additionalProperties", "strict"}
_BY_TYPE = {
    "object": {"type", "properties", "required"},
    "array": {"type", "items", "minItems", "maxItems"},
    "string": {"type"},
    "integer": {"type"},
    "number": {"type"},
    "boolean": {"type"},
    "null": {"type"},
}
_TYPES = tuple(_BY_TYPE)


class SchemaError(ValueError):
    """A schema the compiler does not support or that is malformed (one clear sentence)."""


@dataclass
class Budgets:
    string_tokens: int = 6
    integer_tokens: int = 3
    fraction_tokens: int = 2


def _encode_value(value, encode) -> list[int]:
    return encode(json.dumps(value, ensure_ascii=False))


class _Compiler:
    def __init__(self, root: dict, classes: TokenClasses, encode, budgets: Budgets) -> None:
        self.root, self.classes, self.encode, self.budgets = root, classes, encode, budgets
        self.template = Template()
        self.slot_count = 0
        self.refs: list[str] = []

    def slot(self, slot: Slot) -> None:
        self.slot_count += 1
        if self.slot_count > MAX_SLOTS:
            raise SchemaError(f"the schema has more than {MAX_SLOTS} values to fill; make it smaller")
        self.template.add(slot)

    def fixed(self, text: str) -> None:
        self.template.add(Fixed(text))

    def resolve(self, schema, where: str) -> dict:
        if isinstance(schema, bool):
            if schema:
                return {"type": "string"}  # `true` allows anything: a string is as good as any
            raise SchemaError(f"the schema at {where} is `false`, which no value satisfies")
        if not isinstance(schema, dict):
            raise SchemaError(f"the schema at {where} must be an object")
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                raise SchemaError(f"unsupported keyword '$ref' at {where}: only local references (#/$defs/...) are supported")
            if ref in self.refs:
                raise SchemaError(f"unsupported keyword '$ref' at {where}: recursive references are not supported")
            node = self.root
            for key in ref[2:].split("/"):
                if not isinstance(node, dict) or key not in node:
                    raise SchemaError(f"the reference '{ref}' at {where} points nowhere")
                node = node[key]
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            self.refs.append(ref)
            try:
                return self.resolve({**node, **extra} if isinstance(node, dict) else node, where)
            finally:
                self.refs.pop()
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list):
                    raise SchemaError(f"'{key}' at {where} must be a list")
                rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null" and len(o) == 1)]
                if len(rest) != 1 or len(options) > 2:
                    raise SchemaError(f"unsupported keyword '{key}' at {where}: only one schema or null is supported")
                merged = {k: v for k, v in schema.items() if k != key}
                return self.resolve({**rest[0], **merged} if isinstance(rest[0], dict) else rest[0], where)
        return schema

    def value(self, schema, where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SchemaError(f"the schema nests deeper than {MAX_DEPTH} levels at {where}")
        schema = self.resolve(schema, where)
        if "const" in schema:
            self.fixed(json.dumps(schema["const"], ensure_ascii=False))
            return
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"'enum' at {where} must be a non-empty list")
            choices = [_encode_value(v, self.encode) for v in values]
            self.slot(Slot(budget=max(map(len, choices)), choices=choices, kind="enum"))
            return
        kind = schema.get("type")
        if isinstance(kind, list):
            rest = [t for t in kind if t != "null"]
            kind = rest[0] if rest else "null"
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                raise SchemaError(f"the schema at {where} names no type (add \"type\", \"enum\" or \"const\")")
        if kind not in _TYPES:
            raise SchemaError(f"unsupported type '{kind}' at {where}")
        for key in schema:
            if key not in _BY_TYPE[kind] and key not in _ANNOTATIONS:
                raise SchemaError(f"unsupported keyword '{key}' at {where} (type {kind})")
        getattr(self, "_" + kind)(schema, where, depth)

    def _object(self, schema: dict, where: str, depth: int) -> None:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"'properties' at {where} must be an object")
        required = schema.get("required", [])
        missing = [r for r in required if r not in props]
        if missing:
            raise SchemaError(f"'required' at {where} names '{missing[0]}', which is not in 'properties'")
        self.fixed("{")
        for i, (key, sub) in enumerate(props.items()):
            self.fixed((", " if i else "") + json.dumps(key, ensure_ascii=False) + ": ")
            self.value(sub, f"{where}.{key}", depth + 1)
        self.fixed("}")

    def _array(self, schema: dict, where: str, depth: int) -> None:
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", DEFAULT_ITEMS)
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < lo:
            raise SchemaError(f"minItems/maxItems at {where} must be integers with 0 <= minItems <= maxItems")
        count = max(lo, min(hi, DEFAULT_ITEMS))
        if count > MAX_ITEMS:
            raise SchemaError(f"the array at {where} needs {count} items; at most {MAX_ITEMS} are supported")
        items = schema.get("items", {"type": "string"})
        if isinstance(items, list):
            raise SchemaError(f"unsupported keyword 'items' as a list (tuple validation) at {where}")
        self.fixed("[")
        for i in range(count):
            if i:
                self.fixed(", ")
            self.value(items, f"{where}[{i}]", depth + 1)
        self.fixed("]")

    def _string(self, schema: dict, where: str, depth: int) -> None:
        c = self.classes
        self.fixed('"')
        self.slot(Slot(self.budgets.string_tokens, first=c.string_safe, rest=c.string_safe, min_len=0, kind="string"))
        self.fixed('"')

    def _integer(self, schema: dict, where: str, depth: int) -> None:
        c = self.classes
        self.slot(Slot(self.budgets.integer_tokens, first=c.lead_digits, rest=c.digits, min_len=1, kind="integer"))

    def _number(self, schema: dict, where: str, depth: int) -> None:
        self._integer(schema, where, depth)
        self.fixed(".")
        self.slot(Slot(self.budgets.fraction_tokens, first=self.classes.digits, rest=self.classes.digits,
                       min_len=1, kind="fraction"))

    def _boolean(self, schema: dict, where: str, depth: int) -> None:
        choices = [self.encode("true"), self.encode("false")]
        self.slot(Slot(budget=max(map(len, choices)), choices=choices, kind="boolean"))

    def _null(self, schema: dict, where: str, depth: int) -> None:
        self.fixed("null")


def compile_schema(schema, classes: TokenClasses, encode, budgets: Budgets | None = None) -> Template:
    """The template of ``schema`` for a tokenizer (``encode``, ``classes``); raises ``SchemaError``."""
    compiler = _Compiler(schema if isinstance(schema, dict) else {}, classes, encode, budgets or Budgets())
    compiler.value(schema, "$", 0)
    return compiler.template


JSON_OBJECT_SCHEMA = {"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}


def check_schema(schema) -> None:
    """Refuse a schema that is not itself valid JSON Schema (before compiling it)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema if isinstance(schema, dict) else {}).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise SchemaError(f"the schema is not valid JSON Schema: {e.message}") from None


def validate_output(text: str, schema) -> object:
    """Parse ``text`` and validate it against ``schema``; returns the value or raises ``ValueError``."""
    import jsonschema

    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def mask_for(vocab: int, ids: list[int]) -> torch.Tensor:
    out = torch.zeros(vocab, dtype=torch.bool)
    out[ids] = True
    return out


__all__ = ["Budgets", "SchemaError", "compile_schema", "check_schema", "validate_output", "JSON_OBJECT_SCHEMA",
           "DEFAULT_ITEMS"]

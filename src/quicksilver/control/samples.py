"""Seeded JSON schemas drawn from what the compiler supports, for the tests and the benchmark:
nesting, arrays (bounded or not), enums, numbers, integers, booleans, strings, null, required and
optional properties, ``Optional`` written as ``anyOf`` with null, ``additionalProperties: false``."""
from __future__ import annotations

import random


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    kinds = ["string", "integer", "number", "boolean", "enum", "null", "optional"]
    if depth < 2:
        kinds += ["object", "array", "object"]
    kind = rng.choice(kinds)
    if kind == "object":
        names = rng.sample(["id", "name", "size", "ok", "kind", "items", "meta", "x", "y", "note"], rng.randint(1, 3))
        out = {"type": "object", "properties": {n: random_schema(rng, depth + 1) for n in names},
               "required": [n for n in names if rng.random() < 0.6]}
        if rng.random() < 0.3:
            out["additionalProperties"] = False
        return out
    if kind == "array":
        out = {"type": "array", "items": random_schema(rng, depth + 1)}
        if rng.random() < 0.5:
            out["maxItems"] = rng.randint(1, 3)
        if rng.random() < 0.3:
            out["minItems"] = min(out.get("maxItems", 3), rng.randint(0, 2))
        return out
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", 1, 2.5, True, None, "a b"], rng.randint(1, 4))}
    if kind == "optional":
        return {"anyOf": [{"type": rng.choice(["string", "integer"])}, {"type": "null"}]}
    return {"type": kind, "description": "a value"}


def sample_schemas(count: int = 50) -> list[dict]:
    """``count`` schemas; every other one is wrapped in an object with an integer beside it (depth)."""
    schemas = [random_schema(random.Random(seed)) for seed in range(count)]
    return [s if i % 2 else {"type": "object", "properties": {"v": s, "n": {"type": "integer"}}, "required": ["v"]}
            for i, s in enumerate(schemas)]


__all__ = ["random_schema", "sample_schemas"]

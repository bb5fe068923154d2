"""``--set section.key=value`` overrides of a training config."""
from __future__ import annotations

import ast

from .common import UserError


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set takes section.key=value, got '{item}'")
        if value.lower() in ("true", "false"):  # TOML spelling of booleans
            out[key] = value.lower() == "true"
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out

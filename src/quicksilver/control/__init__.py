"""Controllable generation: canvas templates (``template``), JSON-schema compilation (``schema``),
filling by diffusion (``fill``) or constrained AR decoding (``ar_fill``), structured output end to end
(``structured``) and editing of any span (``edit``)."""
from .schema import Budgets, SchemaError
from .structured import InvalidOutput, StructuredResult, generate_structured

__all__ = ["Budgets", "SchemaError", "InvalidOutput", "StructuredResult", "generate_structured"]

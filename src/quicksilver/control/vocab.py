"""Which tokens of a vocabulary may stand in a JSON value: per-class boolean masks over the vocabulary.

Computed once per tokenizer from each token's own text (``token_text``), so they hold for any
byte-level BPE: a token is *string-safe* when its text needs no escaping inside a JSON string (no
quote, backslash or control character) and is whole UTF-8 (no U+FFFD from a split character);
*digits* are tokens made only of ASCII digits; *lead digits* additionally do not start with 0, so an
integer never has a leading zero (which JSON forbids).
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch

_DIGITS = re.compile(r"[0-9]+")
_LEAD = re.compile(r"[1-9][0-9]*")


@dataclass
class TokenClasses:
    digits: torch.Tensor  # (vocab,) bool
    lead_digits: torch.Tensor
    string_safe: torch.Tensor
    minus: torch.Tensor  # the token(s) whose text is exactly "-"
    vocab_size: int


_CACHE: "weakref.WeakKeyDictionary[object, TokenClasses]" = weakref.WeakKeyDictionary()


def _string_safe(text: str) -> bool:
    if not text or "\ufffd" in text or '"' in text or "\\" in text:
        return False
    return all(ord(c) >= 0x20 and ord(c) != 0x7F for c in text)


def token_classes(tokenizer, banned: list[int] | tuple[int, ...] = ()) -> TokenClasses:
    """The classes for ``tokenizer`` (cached); ``banned`` ids (special tokens) are in none of them."""
    cached = _CACHE.get(tokenizer)
    if cached is not None:
        return cached
    size = int(tokenizer.vocab_size)
    texts = [tokenizer.token_text(i) for i in range(size)]
    special = set(int(i) for i in banned) | set(int(i) for i in getattr(tokenizer, "special_ids", ()))

    def mask(test) -> torch.Tensor:
        return torch.tensor([i not in special and bool(test(t)) for i, t in enumerate(texts)], dtype=torch.bool)

    classes = TokenClasses(digits=mask(_DIGITS.fullmatch), lead_digits=mask(_LEAD.fullmatch),
                           string_safe=mask(_string_safe), minus=mask(lambda t: t == "-"), vocab_size=size)
    try:
        _CACHE[tokenizer] = classes
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        pass
    return classes


__all__ = ["TokenClasses", "token_classes"]

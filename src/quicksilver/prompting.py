"""Token ids for what a user sent: special-token strings in user text are text, not control tokens.

A user who types ``<|endoftext|>`` or ``<|mask|>`` into a prompt or a chat message means those
characters; read as control tokens they would end the text or plant a mask in the prompt.  So user
text is encoded with special tokens taken literally (``encode_literal``), while the chat template's
own text (turn markers such as ``<|im_start|>``) keeps its control tokens.  ``literal=False`` gives the
old behaviour (the server's ``--special-tokens-in-text`` flag).

Only text that holds a special-token string is encoded differently, so every other prompt gets
exactly the ids it always got.  No HTTP here: the server and the CLI call these."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .chat import ChatTemplateError, check_messages


def _specials(backend) -> list[str]:
    return list(getattr(backend, "special_texts", ()) or ())


def holds_special(backend, text: str) -> bool:
    return any(s in text for s in _specials(backend))


def text_ids(backend, text: str, literal: bool = True) -> list[int]:
    """Ids of one piece of user text (a prompt, a suffix)."""
    if literal and holds_special(backend, text) and hasattr(backend, "encode_literal"):
        return backend.encode_literal(text)
    return backend.encode(text)


def chat_ids(backend, messages: Sequence[Mapping], literal: bool = True) -> list[int]:
    """Ids of the chat prompt: the template's text as the model's tokenizer reads it, each message's
    content (where it holds a special-token string) literally.  Raises ChatTemplateError when such a
    content cannot be found in the rendered prompt (a template that rewrites the content)."""
    text = backend.render_chat(messages)
    if not literal or not hasattr(backend, "encode_literal"):
        return backend.encode(text)
    contents = [m["content"] for m in check_messages(messages)]
    risky = [c for c in contents if holds_special(backend, c)]
    if not risky:
        return backend.encode(text)
    ids: list[int] = []
    cursor = 0
    for content in risky:
        at = text.find(content, cursor)
        if at < 0:
            raise ChatTemplateError("a message holds a special-token string that this model's chat template "
                                    "does not keep verbatim, so it cannot be sent as text")
        if at > cursor:
            ids += _template_ids(backend, text[cursor:at], not ids)
        ids += _template_ids(backend, content, not ids, literal=True)
        cursor = at + len(content)
    if cursor < len(text):
        ids += _template_ids(backend, text[cursor:], False)
    return ids


def _template_ids(backend, piece: str, first: bool, literal: bool = False) -> list[int]:
    """Ids of one piece of the prompt; a beginning-of-text id a tokenizer adds belongs only in front."""
    ids = backend.encode_literal(piece) if literal else backend.encode(piece)
    bos = getattr(getattr(backend, "tokenizer", None), "bos_id", None)
    if not first and bos is not None and getattr(backend.tokenizer, "add_bos", False) and ids and ids[0] == bos:
        ids = ids[1:]
    return ids


def fewest_tokens(backend, text: str) -> int:
    """A lower bound on the token count of ``text`` without tokenizing it (0 when unknown)."""
    most = getattr(getattr(backend, "tokenizer", None), "max_token_chars", None)
    return len(text) // most if isinstance(most, int) and most > 0 else 0


def text_problem(value: str) -> str | None:
    """Why ``value`` is not text that can be encoded (a lone UTF-16 surrogate such as '\\ud800', or
    a byte that was not UTF-8 and came through as one), else None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone UTF-16 surrogate (U+{ord(value[e.start]):04X} at character {e.start}), which is not text"
    return None


__all__ = ["text_ids", "chat_ids", "holds_special", "fewest_tokens", "text_problem"]

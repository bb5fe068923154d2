"""Chat templates: Jinja templates (the Hugging Face convention) rendered in a sandbox.

A template comes from a model's ``tokenizer_config.json`` (``chat_template``) or, for Quicksilver's
own models, ``DEFAULT_CHAT_TEMPLATE``.  Templates are data a user downloaded, so they run in Jinja's
immutable sandbox: no attribute access to Python internals, no mutation of the messages.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Quicksilver's own models have no chat tokens (their vocabulary is fixed); turns are marked with
# plain-text headers and an assistant turn ends with end of text, which the SFT data appends.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(ValueError):
    """Messages that cannot be rendered, or a template that fails (one clear sentence)."""


def _raise_exception(message: str):
    raise ChatTemplateError(f"chat template refused the messages: {message}")


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from None


def check_messages(messages: Sequence[Mapping]) -> list[dict]:
    """Plain ``{"role", "content"}`` dicts, or a ChatTemplateError naming what is wrong."""
    if not messages:
        raise ChatTemplateError("messages must hold at least one message")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatTemplateError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            parts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            content = "".join(parts)
        if not isinstance(content, str):
            raise ChatTemplateError(f"message {i} has no text content")
        clean.append({"role": role, "content": content})
    return clean


def render_chat(messages: Sequence[Mapping], template: str | None = None, add_generation_prompt: bool = True,
                **special_tokens: str) -> str:
    """The prompt text for ``messages`` (``special_tokens`` such as ``bos_token="<s>"`` are template
    variables, as Hugging Face passes them)."""
    clean = check_messages(messages)
    compiled = _compile(template or DEFAULT_CHAT_TEMPLATE)
    try:
        return compiled.render(messages=clean, add_generation_prompt=add_generation_prompt, **special_tokens)
    except ChatTemplateError:
        raise
    except Exception as e:  # sandbox violations and template bugs are the template's fault
        raise ChatTemplateError(f"the chat template failed: {e}") from None

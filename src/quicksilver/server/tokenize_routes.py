"""vLLM-style tokenizer routes, so that clients use the server's own tokenizer.

* ``GET /tokenizer_info``: the special tokens (``eos_token``, ``bos_token``, ``pad_token``), the chat
  template and the context length.  lm-evaluation-harness probes it: when it answers, the harness
  tokenizes through the two routes below (its ``remote`` tokenizer) instead of looking for a
  tokenizer named after the model on the Hugging Face Hub.
* ``POST /tokenize``: ``{"prompt": "text"}`` (or ``{"messages": [...]}``, rendered through the chat
  template) → ``{"tokens": [...], "count": N, "max_model_len": L}``.
* ``POST /detokenize``: ``{"tokens": [...]}`` → ``{"prompt": "text"}``.

As in vLLM they stay open when the server has an API key (``guard.py`` says why).  Only the
backend's tokenizer methods are used: no model logic here.
"""
from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from ..chat import ChatTemplateError
from .errors import APIError
from .schemas import ChatMessage

ROUTES = ("/tokenizer_info", "/tokenize", "/detokenize")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, max_length=256)
    prompt: str | None = Field(None, description="Text to tokenize.")
    messages: list[ChatMessage] | None = Field(None, min_length=1, description="Or chat messages, rendered through "
                                                                             "the model's chat template.")
    add_special_tokens: bool = Field(False, description="Accepted for compatibility; Quicksilver's tokenizers add "
                                                        "no special tokens either way.")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, max_length=256)
    tokens: list[int] = Field(..., description="Token ids.")


def _special_text(backend, attribute: str) -> str | None:
    token_id = getattr(backend, attribute, None)
    if token_id is None:
        return None
    return backend.token_text(int(token_id))


def tokenizer_info(backend) -> dict:
    """What a client needs to tokenize as the server does."""
    from ..chat import DEFAULT_CHAT_TEMPLATE

    template = getattr(backend, "chat_template", None)
    tokenizer = getattr(backend, "tokenizer", None)
    if template is None and not hasattr(tokenizer, "render_chat"):  # Quicksilver's own models: the default one
        template = DEFAULT_CHAT_TEMPLATE
    pad_id = getattr(tokenizer, "pad_id", None)
    return {"tokenizer_class": type(tokenizer).__name__ if tokenizer is not None else None,
            "eos_token": _special_text(backend, "eos_id"),
            "bos_token": None,  # Quicksilver's tokenizers have no beginning-of-text token
            "pad_token": backend.token_text(int(pad_id)) if pad_id is not None else None,
            "chat_template": template,
            "model_max_length": backend.context_length,
            "vocab_size": getattr(backend, "vocab_size", None)}


def add_tokenizer_routes(app: FastAPI, ready) -> None:
    """Register the three routes; ``ready()`` returns ``(backend, engine)`` or raises the 503."""

    def check_model(backend, model: str | None) -> None:
        if model is not None and model != backend.name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves '{backend.name}'", "model",
                           "model_not_found")

    @app.get("/tokenizer_info", summary="The tokenizer's special tokens, chat template and context length")
    async def get_tokenizer_info():
        backend, _ = ready()
        return tokenizer_info(backend)

    @app.post("/tokenize", summary="Text (or chat messages) to token ids with the model's tokenizer")
    async def tokenize(body: TokenizeRequest):
        backend, _ = ready()
        check_model(backend, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "send exactly one of 'prompt' and 'messages'", "prompt")
        if body.messages is not None:
            try:
                text = backend.render_chat([m.model_dump() for m in body.messages])
            except ChatTemplateError as e:
                raise APIError(400, str(e), "messages") from None
        else:
            text = body.prompt
        tokens = backend.encode(text)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": backend.context_length}

    @app.post("/detokenize", summary="Token ids to text with the model's tokenizer")
    async def detokenize(body: DetokenizeRequest):
        backend, _ = ready()
        check_model(backend, body.model)
        vocab = getattr(backend, "vocab_size", None)
        bad = next((t for t in body.tokens if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            limit = f"0 to {vocab - 1}" if vocab is not None else "non-negative"
            raise APIError(400, f"token id {bad} is outside this model's vocabulary ({limit})", "tokens")
        return {"prompt": backend.decode(body.tokens)}


__all__ = ["ROUTES", "TokenizeRequest", "DetokenizeRequest", "tokenizer_info", "add_tokenizer_routes"]

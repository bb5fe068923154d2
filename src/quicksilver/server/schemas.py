"""Request bodies of the OpenAI-compatible routes, with bounds (pydantic).

Unknown fields are ignored (OpenAI clients send fields such as ``user`` that change nothing here).
Bounds that depend on the model or the server's settings (context length, ``n`` cap, token cap) are
checked in ``app.py`` so that their messages can name the limit.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .prompts import PROMPT_JSON_SCHEMA, check_prompt_shape

# Evaluation harnesses pass a task's stop list and add end of text (lm-evaluation-harness: a task's
# four stops become five), so the cap is well above OpenAI's 4.
MAX_STOPS = 32
MAX_STOP_CHARS = 128
MAX_LOGPROBS = 20  # top alternatives per position (OpenAI allows 5, vLLM 20)

# ``prompt`` of /v1/completions: every shape the OpenAI API allows (a string, a list of strings, a
# list of token ids, a list of lists of token ids), checked by one function so that a wrong value is
# reported in plain words ("'prompt' must be a string, ...") rather than one error per union member.
Prompt = Annotated[Any, BeforeValidator(check_prompt_shape), WithJsonSchema(PROMPT_JSON_SCHEMA)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Decoding(BaseModel):
    """Fields shared by both routes: sampling, and Quicksilver's diffusion knobs (all optional)."""
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=0, le=2**31 - 1, description="Most tokens to generate (0 only with echo).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOPS} stop sequences.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, description="Choices to generate per prompt (the server's --max-n caps it).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | bool | None = Field(None, description=f"Completions: log-probabilities of the tokens and this many "
                                        f"top alternatives (0 to {MAX_LOGPROBS}; autoregressive models only).")
    # -- diffusion knobs ------------------------------------------------------------------------------
    steps: int | None = Field(None, ge=1, le=65536, description="Diffusion forward passes in all (fixed rule).")
    block_length: int | None = Field(None, ge=1, le=4096, description="Positions decoded together.")
    commit: Literal["fixed", "threshold", "factor", "entropy"] | None = None
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="Commit threshold of the threshold rule.")
    cache: Literal["none", "prefix", "dual"] | None = None
    diffusing: bool = Field(False, description="With stream: also send whole-draft snapshots (the draft field).")


class CompletionRequest(Decoding):
    prompt: Prompt = Field(..., description="A string, a list of strings, a list of token ids or a list of lists of "
                                            "token ids; choice i * n + j belongs to prompt i.")
    suffix: str | None = Field(None, description="Fill in the middle: the text after the completion.")
    echo: bool = Field(False, description="Return the prompt before the completion (with logprobs: its tokens "
                                          "scored too; max_tokens 0 scores the prompt alone).")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)

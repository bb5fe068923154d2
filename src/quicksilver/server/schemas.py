"""Request bodies of the OpenAI-compatible routes, with bounds (pydantic).

Unknown fields are ignored (OpenAI clients send fields such as ``user`` that change nothing here).
Bounds that depend on the model or the server's settings (context length, ``n`` cap, token cap) are
checked in ``app.py`` so that their messages can name the limit.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4
MAX_STOP_CHARS = 128


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Decoding(BaseModel):
    """Fields shared by both routes: sampling, and Quicksilver's diffusion knobs (all optional)."""
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOPS} stop sequences.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=128, description="Choices to generate (the server caps it).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | bool | None = Field(None, description="Not supported: must be null or false.")
    # -- diffusion knobs ------------------------------------------------------------------------------
    steps: int | None = Field(None, ge=1, le=65536, description="Diffusion forward passes in all (fixed rule).")
    block_length: int | None = Field(None, ge=1, le=4096, description="Positions decoded together.")
    commit: Literal["fixed", "threshold", "factor", "entropy"] | None = None
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="Commit threshold of the threshold rule.")
    cache: Literal["none", "prefix", "dual"] | None = None
    diffusing: bool = Field(False, description="With stream: also send whole-draft snapshots (the draft field).")
    # -- verified decoding (an AR model with a draft head) --------------------------------------------
    decoding: Literal["auto", "verified"] | None = Field(
        None, description="'verified': a draft head proposes blocks and the model keeps exactly its own choices "
                          "(the default for a model that ships a draft head); 'auto': the model's plain sampler.")
    draft_length: int | None = Field(None, ge=1, le=64, description="Verified decoding: tokens drafted per round.")
    draft_source: Literal["head", "lookup", "head+lookup"] | None = Field(
        None, description="Verified decoding: drafts from the draft head, copied from earlier text, or both.")


class CompletionRequest(Decoding):
    prompt: str | list[str] = Field(..., description="A string (or a list holding one string).")
    suffix: str | None = Field(None, description="Fill in the middle: the text after the completion.")
    echo: bool = False


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

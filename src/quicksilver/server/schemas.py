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


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``{"type": "json_schema", "json_schema": {"name", "schema"}}``, ``{"type": "json_object"}`` or text."""
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


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
    response_format: ResponseFormat | None = Field(None, description="Structured output (docs/control.md).")


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
    tool_calls: list[dict] | None = None  # an assistant turn that called tools (sent back by clients)
    tool_call_id: str | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=4096)
    parameters: dict | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: ToolFunction


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    tools: list[Tool] | None = Field(None, max_length=64)
    tool_choice: str | dict | None = Field(None, description='"none", "auto", "required" or a named function.')


class EditSpan(BaseModel):
    model_config = ConfigDict(extra="ignore")
    start: int = Field(..., ge=0)
    end: int = Field(..., ge=0)
    max_tokens: int = Field(16, ge=1, le=4096)


class EditRequest(Decoding):
    """``/v1/edits``: regenerate ``spans`` of ``input`` (or its ``<|mask|>`` placeholders)."""
    input: str = Field(..., max_length=200_000)
    spans: list[EditSpan] | None = Field(None, max_length=64)
    instruction: str | None = Field(None, max_length=20_000)

"""Request bodies of the OpenAI-compatible routes, with bounds (pydantic).

Unknown fields are ignored (OpenAI clients send fields such as ``user`` that change nothing here).
Types are strict: ``"5"`` is not a number and ``"yes"`` is not a boolean (a client that sends them has
a bug that coercion would hide); an integer is accepted where a float is expected.  Every string is
checked to be text: a lone UTF-16 surrogate (the valid JSON escape ``"\\ud800"``) is refused with 400.
Bounds that depend on the model or the server's settings (context length, ``n`` cap, token cap) are
checked in ``app.py`` so that their messages can name the limit.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model, model_validator
from pydantic_core import PydanticCustomError

from ..prompting import text_problem

from ..sampling.policy import FIELD_HELP
from ..sampling.types import DecodePolicy

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


def _first_bad_text(value, path: str) -> tuple[str, str] | None:
    """The first string (or key) below ``value`` that is not text: (its path, the problem)."""
    if isinstance(value, str):
        problem = text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            # the path goes into the error message: a key that is not text is shown escaped
            name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
            where = f"{path}.{name}" if path else name
            found = _first_bad_text(key, where) or _first_bad_text(item, where)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_bad_text(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
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


class OpenAIFields(BaseModel):
    """Fields shared by both routes that OpenAI defines."""
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _all_text(cls, data):
        found = _first_bad_text(data, "") if isinstance(data, dict) else None
        if found:
            raise PydanticCustomError("invalid_text", "'{param}' {problem}", {"param": found[0], "problem": found[1]})
        return data

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=0, le=2**31 - 1, description="Most tokens to generate (0 only with echo).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy (the default, unless a "
                                                                         "preset is named).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling (default 1, unless a preset "
                                                                   "is named).")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOPS} stop sequences.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, description="Choices to generate per prompt (the server's --max-n caps it).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | bool | None = Field(None, description=f"Completions: log-probabilities of the tokens and this many "
                                        f"top alternatives (0 to {MAX_LOGPROBS}; autoregressive models only).")
    # -- Quicksilver's decoding -----------------------------------------------------------------------
    preset: str | None = Field(None, max_length=64, description="A preset or setting name, e.g. 'llada' or "
                                                                "'dual-inc+thr0.7' (docs/serving.md); the "
                                                                "fields below apply over it.")
    diffusing: bool = Field(False, description="With stream: also send whole-draft snapshots (the draft field).")
    response_format: ResponseFormat | None = Field(None, description="Structured output (docs/control.md).")


# Every other ``DecodePolicy`` field is a request field of the same name and type (optional: the
# server's default decoding, or the named preset, fills what a request leaves out).  The resolver
# (``sampling.policy.resolve_policy``) validates them; the schema only bounds integers to 32 bits.
OPENAI_NAMED = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed"}
POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(DecodePolicy) if f.name not in OPENAI_NAMED)


def _policy_field(name: str, annotation) -> tuple:
    numeric = [a for a in typing.get_args(annotation) or (annotation,) if a in (int, float)]
    bounds = dict(ge=-(2**31), le=2**31 - 1) if int in numeric else {}
    return annotation | None, Field(None, description=FIELD_HELP[name], **bounds)


_HINTS = typing.get_type_hints(DecodePolicy)
Decoding = create_model("Decoding", __base__=OpenAIFields, __doc__="Fields shared by both routes.",
                        **{name: _policy_field(name, _HINTS[name]) for name in POLICY_FIELDS})


class CompletionRequest(Decoding):
    prompt: Prompt = Field(..., description="A string, a list of strings, a list of token ids or a list of lists of "
                                            "token ids; choice i * n + j belongs to prompt i.")
    suffix: str | None = Field(None, description="Fill in the middle: the text after the completion.")
    echo: bool = Field(False, description="Return the prompt before the completion (with logprobs: its tokens "
                                          "scored too; max_tokens 0 scores the prompt alone).")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
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

"""The server's side of controllable generation: ``response_format``, ``tools`` and ``/v1/edits``.

Only request checking and response shapes live here; the schema compiler, the template filling and
the edits are the backend's (``api.LM.compile_schema`` / ``structured_ids`` / ``tool_call_ids`` /
``edit_ids``), run on the engine's worker as a ``Request.run`` job.  See docs/control.md.
"""
from __future__ import annotations

import asyncio
import json
import uuid

from ..control.edit import SpanError, check_spans, joint_block, parse_placeholders
from ..control.schema import JSON_OBJECT_SCHEMA, SchemaError
from ..engine import Request as EngineRequest
from ..prompting import chat_ids
from ..sampling.types import GenerationError
from .errors import APIError

STRING_TOKENS = 6  # token budget of each string value of a structured response


def response_schema(fmt) -> dict | None:
    """The JSON schema a ``response_format`` asks for (None: plain text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JSON_OBJECT_SCHEMA
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs json_schema.schema", "response_format")
    return fmt.json_schema.schema_


def _capable(backend, method: str, what: str) -> None:
    if not callable(getattr(backend, method, None)):
        raise APIError(400, f"this model does not support {what}", code="unsupported")


def _policy(body, backend, length: int, block_length: int | None = None):
    """The model's default decoding (or the named preset) with the request's fields over it, as for
    a completion (``app._job``); ``block_length`` is the default block when the request names none."""
    from ..sampling.policy import resolve_policy
    from .schemas import POLICY_FIELDS

    if body.n != 1:
        raise APIError(400, "n must be 1 with response_format, tools or edits", "n")
    if body.stop:
        raise APIError(400, "stop cannot be combined with response_format, tools or edits", "stop")
    given = {name: getattr(body, name) for name in POLICY_FIELDS}
    if given.get("block_length") is None and block_length is not None and backend.is_diffusion:
        given["block_length"] = block_length
    sampling = {} if body.preset is not None else dict(temperature=0.0, top_p=1.0)
    for name in ("temperature", "top_p"):
        if getattr(body, name) is not None:
            sampling[name] = getattr(body, name)
    try:
        return resolve_policy(body.preset, base=backend.default_policy if body.preset is None else None,
                              diffusion=backend.is_diffusion, max_new_tokens=max(1, length), seed=body.seed,
                              **sampling, **given)
    except GenerationError as e:
        raise APIError(400, str(e)) from None


def corrected_job(body, ids: list[int], suffix, job: EngineRequest, backend) -> EngineRequest:
    """A completion whose policy corrects while refining runs as one backend job (``generate_ids``
    through the canvas filler): its text before the first mask is not final, so it cannot stream."""
    if job.policy.correct == "none" or not backend.is_diffusion:
        return job
    if body.stream:
        raise APIError(400, "correct cannot be combined with stream (corrected text is not append-only); "
                            "call without stream", "correct")
    if suffix is not None or job.n != 1:
        raise APIError(400, "correct needs n = 1 and no suffix", "correct")
    job.run = lambda p, on_step: backend.generate_ids([ids], p, on_step)
    return job


async def _compile(backend, schema, param: str):
    try:
        return await asyncio.to_thread(backend.compile_schema, schema, STRING_TOKENS)
    except SchemaError as e:
        raise APIError(400, str(e), param, "unsupported_schema") from None


def _fits(backend, used: int, length: int, param: str) -> None:
    if used + length > backend.context_length:
        raise APIError(400, f"this model's maximum context length is {backend.context_length} tokens, but the prompt "
                            f"has {used} tokens and the template {length}", param, "context_length_exceeded")


async def structured_job(body, ids: list[int], backend) -> EngineRequest:
    schema = response_schema(body.response_format)
    _capable(backend, "structured_ids", "structured output")
    lay = await _compile(backend, schema, "response_format")
    _fits(backend, len(ids), len(lay.ids), "response_format")
    policy = _policy(body, backend, len(lay.ids))
    return EngineRequest(ids, policy, drafts=bool(body.diffusing and body.stream and backend.is_diffusion),
                         run=lambda p, on_step: backend.structured_ids(ids, schema, lay, p, on_step))


# -- tools ---------------------------------------------------------------------------------------------
def chosen_tools(body) -> list | None:
    """The tools a request may call (None: answer in text).  "auto" and "required" both call a tool:
    the model chooses which (a choice slot scored by the model), and its arguments fill that tool's
    parameters schema."""
    if not body.tools:
        if body.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", "tool_choice")
        return None
    choice = body.tool_choice if body.tool_choice is not None else "auto"
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return list(body.tools)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        tools = [t for t in body.tools if t.function.name == name]
        if not tools:
            raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools", "tool_choice")
        return tools
    raise APIError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                        '{"name": ...}}', "tool_choice")


def tool_messages(messages: list[dict], tools) -> list[dict]:
    """Chat messages with the tools described in a system turn, and earlier tool calls and results as text."""
    lines = ["You can call these functions; answer with a call as JSON."]
    for tool in tools:
        f = tool.function
        lines.append(f"- {f.name}({json.dumps(f.parameters or {}, separators=(',', ':'))})"
                     + (f": {f.description}" if f.description else ""))
    out = [{"role": "system", "content": "\n".join(lines)}]
    for m in messages:
        content = m.get("content")
        if m.get("tool_calls") and not content:
            content = json.dumps([c.get("function", c) for c in m["tool_calls"]])
        out.append({"role": m["role"], "content": content if content is not None else ""})
    return out


async def tool_job(body, ids: list[int], backend, tools) -> EngineRequest:
    _capable(backend, "tool_call_ids", "tools")
    compiled = []
    for tool in tools:
        schema = tool.function.parameters or {"type": "object", "properties": {}}
        compiled.append((tool.function.name, schema, await _compile(backend, schema, "tools")))
    longest = max(len(lay.ids) for _, _, lay in compiled) + 16
    _fits(backend, len(ids), longest, "tools")
    policy = _policy(body, backend, longest)
    return EngineRequest(ids, policy, run=lambda p, on_step: backend.tool_call_ids(ids, compiled, p, on_step))


def as_tool_call(response: dict) -> dict:
    """A chat completion whose content is ``{"name", "arguments"}`` as an OpenAI tool-call message."""
    choice = response["choices"][0]
    call = json.loads(choice["message"]["content"])
    choice["message"] = {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]}
    choice["finish_reason"] = "tool_calls"
    return response


# -- edits ---------------------------------------------------------------------------------------------
def edit_job(body, backend, literal: bool = True) -> EngineRequest:
    _capable(backend, "edit_ids", "edits")
    text = body.input
    try:
        if body.spans is None:
            text, spans = parse_placeholders(text)
        else:
            spans = [(s.start, s.end, s.max_tokens) for s in body.spans]
        spans = check_spans(text, spans)
    except SpanError as e:
        raise APIError(400, str(e), "spans") from None
    prompt: list[int] = []
    if body.instruction:
        try:
            prompt = chat_ids(backend, [{"role": "user", "content": body.instruction}], literal)
        except Exception as e:  # a chat template error names the problem
            raise APIError(400, str(e), "instruction") from None
    budget = sum(b for _, _, b in spans)
    _fits(backend, len(prompt), len(backend.encode(text)) + budget, "input")
    policy = _policy(body, backend, len(backend.encode(text)) + budget,
                     block_length=joint_block(text, spans, backend.encode))
    return EngineRequest(prompt, policy, drafts=bool(body.diffusing and body.stream and backend.is_diffusion),
                         run=lambda p, on_step: backend.edit_ids(prompt, text, spans, p, on_step, literal))


__all__ = ["response_schema", "structured_job", "chosen_tools", "tool_messages", "tool_job", "as_tool_call",
           "edit_job"]

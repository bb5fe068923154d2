"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Whatever a client sends is answered with one of these and a clear sentence, never a traceback; only a
failure of the server itself gets a 5xx: a 500 that names an error id (the log line with the traceback
carries the same id), or a 503 while the model loads or the server stops.
"""
from __future__ import annotations

import json
import logging
import uuid

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
         503: "service_unavailable_error"}
log = logging.getLogger("quicksilver.server")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def error_bytes(status: int, message: str, code: str | None = None) -> bytes:
    return json.dumps(error_body(status, message, None, code)).encode()


def _describe(error: dict) -> tuple[str, str | None]:
    """One sentence for pydantic's first error, naming the field."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON", None
    if kind == "missing":
        return f"'{param}' is required", param
    if kind == "invalid_text":  # raised with the offending field's path
        return error.get("msg", "the request holds invalid text"), (error.get("ctx") or {}).get("param")
    message = error.get("msg", "is invalid")
    if message.startswith("Input should be") or message.startswith("Value error"):
        message = message.replace("Input should be", "should be").replace("Value error, ", "")
    if param is None:
        return f"the request body is invalid: {message}", None
    return f"'{param}' {message}", param


# pydantic names the member of a union (``str | list[str]``) as one more step of an error's location,
# e.g. 'stop.str': these are the plain words for the members, so that one sentence names the field.
_MEMBER_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                 "dict": "an object", "none": "null"}


def _is_member(step: str) -> bool:
    return step in _MEMBER_WORDS or "[" in step or step[:1].isupper()


def _member_words(tag: str) -> str:
    if tag.startswith("list["):
        return f"a list of {_member_words(tag[5:-1]).removeprefix('a ').removeprefix('an ')}s"
    if tag in _MEMBER_WORDS:
        return _MEMBER_WORDS[tag]
    words = "".join(" " + c.lower() if c.isupper() else c for c in tag).strip()  # ContentPart -> content part
    return f"a {words}" if tag.isidentifier() else "another shape"


def _describe_union(errors: list[dict]) -> tuple[str, str] | None:
    """One sentence for a value that matched no member of a union: the errors of the first field
    whose locations differ only in their last step (the member)."""
    locs = [[str(p) for p in e.get("loc", ()) if p != "body"] for e in errors]
    first = locs[0]
    if len(first) < 2 or errors[0].get("type") == "missing":
        return None
    field = first[:-1]
    members = [loc[len(field)] for loc in locs if len(loc) > len(field) and loc[:len(field)] == field]
    if len(set(members)) < 2 or not all(_is_member(m) for m in members):
        return None
    param = ".".join(field)
    words = [_member_words(m) for m in dict.fromkeys(members)]
    shapes = ", ".join(words[:-1]) + " or " + words[-1]
    return f"'{param}' must be {shapes}", param


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return error_response(400, "the request is invalid")
    message, param = _describe_union(list(errors)) or _describe(errors[0])
    return error_response(400, message, param)


async def http_handler(request: Request, exc: HTTPException) -> JSONResponse:
    status = exc.status_code if 400 <= exc.status_code < 600 else 400
    detail = exc.detail if isinstance(exc.detail, str) else "the request is invalid"
    if status == 400 and "parsing the body" in detail:
        detail = "the request body is not valid JSON (or not UTF-8)"
    if status == 404:
        detail = f"no route {request.method} {request.url.path}"
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return error_response(status, detail, headers=getattr(exc, "headers", None))


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code,
                          headers={"Retry-After": "1"} if exc.status in (429, 503) else None)


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug met while serving one request: a 500 in the OpenAI shape naming an id that the logged
    traceback carries too (the server goes on serving)."""
    ident = "err-" + uuid.uuid4().hex[:12]
    log.error("%s %s failed (%s)", request.method, request.url.path, ident, exc_info=exc)
    return error_response(500, f"the server failed to serve this request (error id {ident}); it has been logged",
                          code="internal_error")

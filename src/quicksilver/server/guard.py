"""The checks every request passes before a route sees it (one pure ASGI middleware).

* API key: with a key set, every ``/v1/*`` route needs ``Authorization: Bearer <key>`` (compared in
  constant time); ``/health``, ``/version``, ``/metrics`` and the playground stay open.
* Body: read here, at most ``max_body`` bytes (413 past it, whatever Content-Length claims), within
  ``body_timeout_s`` (408 otherwise, then the connection closes: a client that sends less than its
  Content-Length cannot hold a connection open); a POST to ``/v1/*`` (or to ``/tokenize``,
  ``/detokenize``) must be ``application/json``
  (415) and valid UTF-8 (400).  The route then reads the
  buffered body, and later ``receive`` calls go to the client again, so a disconnect is still seen.
"""
from __future__ import annotations

import asyncio
import hmac
import time

from .errors import error_bytes

# The tokenizer routes (tokenize_routes.py) take JSON bodies like /v1/*, but stay open without the API
# key, as in vLLM: they reveal only the tokenizer, and lm-evaluation-harness probes /tokenizer_info
# without credentials before it decides how to tokenize.
JSON_ROUTES = ("/tokenize", "/detokenize")


class RequestGuard:
    def __init__(self, app, api_key: str | None, max_body: int, body_timeout_s: float = 30.0) -> None:
        self.app, self.api_key, self.max_body, self.body_timeout_s = app, api_key, max_body, body_timeout_s

    async def _refuse(self, send, status: int, message: str, code: str | None = None,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = error_bytes(status, message, code)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        protected = path == "/v1" or path.startswith("/v1/")
        if self.api_key and protected and scope.get("method") != "OPTIONS":
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "invalid API key"
                return await self._refuse(send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self._refuse(send, 413, f"the request body is larger than {self.max_body} bytes")
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await self._refuse(send, 408, f"the request body did not arrive within "
                                                     f"{self.body_timeout_s:g} seconds",
                                          headers=[(b"connection", b"close")])
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await self._refuse(send, 413, f"the request body is larger than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if protected or path in JSON_ROUTES:
            kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if kind != "application/json":
                return await self._refuse(send, 415, "the request body must be JSON, sent with "
                                                     "'Content-Type: application/json'")
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as e:
                return await self._refuse(send, 400, f"the request body is not valid UTF-8 (bad byte at offset {e.start})")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

"""The OpenAI-compatible HTTP server (FastAPI) over the engine.

Routes: ``GET /v1/models``, ``POST /v1/completions`` (``suffix`` = fill in the middle),
``POST /v1/chat/completions``, ``GET /health`` (503 until the model is loaded), ``GET /metrics``
(Prometheus text), ``GET /version``, ``GET /`` (the playground page) and ``/static/*``.
The streaming contract (SSE chunks, draft frames, stats) is in docs/serving.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..backend import Backend
from ..chat import ChatTemplateError
from ..engine import (Delta, Done, Draft, Engine, EngineClosed, EngineConfig, Failed, Finished, QueueFull,
                      Request as EngineRequest)
from ..prompting import chat_ids, fewest_tokens, text_ids
from ..sampling.canvas import fixed_length
from ..sampling.policy import resolve_policy
from ..sampling.types import GenerationError
from .errors import APIError, api_error_handler, error_body, http_handler, unexpected_handler, validation_handler
from .guard import RequestGuard
from .metrics import Histogram, render_metrics
from .schemas import MAX_STOP_CHARS, MAX_STOPS, POLICY_FIELDS, ChatRequest, CompletionRequest, Decoding

STATIC = Path(__file__).parent / "static"
PING_S = 15.0  # an SSE comment after this long without an event keeps proxies and clients patient
log = logging.getLogger("quicksilver.server")


@dataclass
class ServerSettings:
    model: str = "coder-tiny"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are given
    max_batch: int = 8
    max_queue: int = 64
    max_n: int = 4
    max_body: int = 1_000_000  # bytes
    time_limit_s: float = 120.0
    default_max_tokens: int = 128  # when a request names none (capped by the context left)
    max_tokens_limit: int | None = None  # the most a request may ask for; None: the model's context
    device: str | None = None
    drain_s: float = 10.0  # on shutdown, how long running requests may finish
    body_timeout_s: float = 30.0  # a request body must arrive within this (408 otherwise)
    special_tokens_in_text: bool = False  # True: '<|endoftext|>' typed by a user is the control token


@dataclass
class ServerState:
    settings: ServerSettings
    backend: Backend | None = None
    engine: Engine | None = None
    load_error: str | None = None
    started: float = field(default_factory=time.time)
    latency: Histogram = field(default_factory=Histogram)  # seconds from submission to the end

    def ready(self) -> tuple[Backend, Engine]:
        if self.load_error:
            raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")
        if self.engine is None or self.backend is None:
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading")
        if not self.engine.alive:
            raise APIError(503, "the engine has stopped; restart the server", code="engine_dead")
        return self.backend, self.engine


def _load_backend(settings: ServerSettings) -> Backend:
    from ..api import load_backend

    return load_backend(settings.model, device=settings.device)


def create_app(settings: ServerSettings | None = None, backend: Backend | None = None,
               loader: Callable[[ServerSettings], Backend] | None = None) -> FastAPI:
    """The app.  The model loads in a background thread at startup (``/health`` is 503 meanwhile),
    from ``backend`` when given, else ``loader`` (default: ``quicksilver.api.load_backend(settings.model)``)."""
    settings = settings or ServerSettings()
    state = ServerState(settings)

    def load_in_background() -> None:
        try:
            b = backend if backend is not None else (loader or _load_backend)(settings)
            engine = Engine(b, EngineConfig(max_batch=settings.max_batch, max_queue=settings.max_queue,
                                            time_limit_s=settings.time_limit_s, max_n=settings.max_n),
                            on_close=state.latency.record).start()
            state.backend, state.engine = b, engine
            log.info("model %s loaded; serving", b.name)
        except Exception as e:  # a missing model or a bad checkpoint: health says why
            state.load_error = f"{type(e).__name__}: {e}"
            log.error("model failed to load: %s", state.load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load_in_background, name="quicksilver-load", daemon=True).start()
        yield
        if state.engine is not None:  # graceful drain: no new requests, running ones may finish
            await asyncio.to_thread(state.engine.shutdown, settings.drain_s)

    app = FastAPI(title="Quicksilver", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible API of a masked-diffusion language model.")
    app.state.qs = state
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(HTTPException, http_handler)
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(Exception, unexpected_handler)
    app.add_middleware(RequestGuard, api_key=settings.api_key, max_body=settings.max_body,
                       body_timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["Authorization", "Content-Type"])

    # -- open routes ------------------------------------------------------------------------------------
    @app.get("/health", summary="Liveness and readiness: 503 until the model is loaded")
    async def health():
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        if state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        if not state.engine.alive:
            return JSONResponse({"status": "error", "error": state.engine.error or "engine stopped"}, status_code=503)
        return {"status": "ok", "model": state.backend.name}

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(state.engine, state.latency), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def playground():
        page = STATIC / "index.html"
        if not page.is_file():
            raise APIError(404, "the playground page is not installed")
        return FileResponse(page, media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    # -- the OpenAI API -----------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models():
        backend_, _ = state.ready()
        return {"object": "list", "data": [_model_card(backend_, state)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        backend_, _ = state.ready()
        if model_id != backend_.name:
            raise APIError(404, f"the model '{model_id}' does not exist; this server serves '{backend_.name}'",
                           "model", "model_not_found")
        return _model_card(backend_, state)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        backend_, engine = state.ready()
        _check_common(body, backend_, settings)
        if body.echo:
            raise APIError(400, "echo is not supported", "echo")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "prompt must be a string (or a list of exactly one string); use n for "
                                    "several completions", "prompt")
            prompt = prompt[0]
        if prompt == "" and not body.suffix:
            raise APIError(400, "prompt must not be empty", "prompt")
        _refuse_far_too_long(backend_, prompt + (body.suffix or ""))
        literal = not settings.special_tokens_in_text
        # Tokenizing is CPU work of up to a second for a long prompt: off the event loop.
        ids = await asyncio.to_thread(text_ids, backend_, prompt, literal)
        suffix = await asyncio.to_thread(text_ids, backend_, body.suffix, literal) if body.suffix else None
        if suffix is not None and not ids and not suffix:
            raise APIError(400, "prompt and suffix are both empty", "prompt")
        job = _job(body, ids, suffix, backend_, settings)
        return await _serve(request, engine, job, body, backend_.name, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        backend_, engine = state.ready()
        _check_common(body, backend_, settings)
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        messages = [m.model_dump() for m in body.messages]
        _refuse_far_too_long(backend_, "".join(_message_text(m) for m in messages))
        try:
            ids = await asyncio.to_thread(chat_ids, backend_, messages, not settings.special_tokens_in_text)
        except ChatTemplateError as e:
            raise APIError(400, str(e), "messages") from None
        if not ids:
            raise APIError(400, "the messages render to an empty prompt", "messages")
        job = _job(body, ids, None, backend_, settings)
        return await _serve(request, engine, job, body, backend_.name, chat=True)

    return app


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _refuse_far_too_long(backend: Backend, text: str) -> None:
    """Refuse a prompt that cannot fit whatever its tokens, before spending CPU on tokenizing it."""
    fewest = fewest_tokens(backend, text)
    if fewest > backend.context_length:
        raise APIError(400, f"this model's maximum context length is {backend.context_length} tokens, but the prompt "
                            f"has at least {fewest} tokens; shorten the prompt", "prompt", "context_length_exceeded")


def _model_card(backend: Backend, state: ServerState) -> dict:
    return {"id": backend.name, "object": "model", "created": int(state.started), "owned_by": "quicksilver",
            "context_length": backend.context_length, "diffusion": backend.is_diffusion}


def _check_common(body: Decoding, backend: Backend, settings: ServerSettings) -> None:
    if body.model is not None and body.model != backend.name:
        raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{backend.name}'",
                       "model", "model_not_found")
    if body.n > settings.max_n:
        raise APIError(400, f"n must be at most {settings.max_n}, got {body.n}", "n")
    if body.logprobs not in (None, False, 0):
        raise APIError(400, "logprobs are not supported", "logprobs")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop takes at most {MAX_STOPS} sequences, got {len(stops)}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise APIError(400, f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters", "stop")


def _job(body: Decoding, ids: list[int], suffix: list[int] | None, backend: Backend,
         settings: ServerSettings) -> EngineRequest:
    """The engine request: the model's default decoding with the request's fields over it."""
    context = backend.context_length
    used = fixed_length(ids, suffix)
    limit = min(context, settings.max_tokens_limit or context)
    if body.max_tokens is not None and body.max_tokens > limit:
        raise APIError(400, f"max_tokens must be at most {limit}, got {body.max_tokens}", "max_tokens")
    max_tokens = body.max_tokens or min(settings.default_max_tokens, limit, max(1, context - used))
    if used + max_tokens > context:
        raise APIError(400, f"this model's maximum context length is {context} tokens, but the prompt has {used} "
                            f"tokens and max_tokens is {max_tokens} ({used + max_tokens} in all); shorten the prompt "
                            f"or lower max_tokens", "prompt" if used >= context else "max_tokens",
                       "context_length_exceeded")
    given = {name: getattr(body, name) for name in POLICY_FIELDS}
    sampling = {} if body.preset is not None else dict(temperature=0.0, top_p=1.0)  # the OpenAI defaults
    for name in ("temperature", "top_p"):
        if getattr(body, name) is not None:
            sampling[name] = getattr(body, name)
    try:
        policy = resolve_policy(body.preset, base=backend.default_policy if body.preset is None else None,
                                diffusion=backend.is_diffusion, max_new_tokens=max_tokens, seed=body.seed,
                                **sampling, **given)
    except GenerationError as e:
        raise APIError(400, str(e)) from None
    stops = tuple([body.stop] if isinstance(body.stop, str) else (body.stop or []))
    return EngineRequest(ids, policy, n=body.n, stops=stops, suffix=suffix,
                         drafts=bool(body.diffusing and body.stream and backend.is_diffusion))


async def _serve(request: Request, engine: Engine, job: EngineRequest, body: Decoding, model: str, chat: bool):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.sink = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    try:
        engine.submit(job)
    except GenerationError as e:
        code = "context_length_exceeded" if "context" in str(e) else None
        raise APIError(400, str(e), code=code) from None
    except QueueFull as e:
        raise APIError(429, str(e), code="server_busy") from None
    except EngineClosed as e:
        raise APIError(503, str(e), code="shutting_down") from None
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse(engine, job, events, ident, created, model, chat, include_usage, body.diffusing)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collect = asyncio.ensure_future(_collect(events, job.n))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not collect.done():  # the client left (or the server is stopping): free the slot
            engine.cancel(job)
            collect.cancel()
        gone.cancel()
    if collect.cancelled() or not collect.done():
        return JSONResponse(status_code=499, content=None)
    texts, finished, done, failed = collect.result()
    if failed is not None:
        raise APIError(failed.status, failed.message, code="internal_error" if failed.status == 500 else None)
    choices = []
    for i in range(job.n):
        f = finished.get(i)
        text = f.text if f else texts.get(i, "")
        reason = f.finish_reason if f else "length"
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": reason})
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": choices, "usage": _usage(done), "stats": done.stats}


def _usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens, "nfe": done.nfe}


async def _collect(events: asyncio.Queue, n: int):
    texts: dict[int, str] = {}
    finished: dict[int, Finished] = {}
    while True:
        event = await events.get()
        if isinstance(event, Delta):
            texts[event.index] = texts.get(event.index, "") + event.text
        elif isinstance(event, Finished):
            finished[event.index] = event
        elif isinstance(event, Done):
            return texts, finished, event, None
        elif isinstance(event, Failed):
            return texts, finished, None, event


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _frame(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _sse(engine: Engine, job: EngineRequest, events: asyncio.Queue, ident: str, created: int, model: str,
               chat: bool, include_usage: bool, diffusing: bool):
    """SSE frames: text chunks (append-only), draft frames when asked, finish frames with stats, the
    usage chunk when asked, then ``data: [DONE]``.  Leaving early (client gone) cancels the request."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    started = time.monotonic()
    over = False

    def chunk(index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant"} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}

    try:
        if chat:
            for i in range(job.n):
                yield _frame(chunk(i, role=True))
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=PING_S)
            except asyncio.TimeoutError:
                yield ": ping\n\n"
                continue
            if isinstance(event, Delta):
                yield _frame(chunk(event.index, event.text))
            elif isinstance(event, Draft):
                if diffusing:
                    frame = chunk(event.index)
                    frame["draft"] = {"index": event.index, "step": event.step, "block": event.block,
                                      "tokens": event.tokens}
                    yield _frame(frame)
            elif isinstance(event, Finished):
                frame = chunk(event.index, finish=event.finish_reason)
                frame["stats"] = {"nfe": event.nfe, "generated_tokens": event.tokens,
                                  "seconds": round(time.monotonic() - started, 4),
                                  "tokens_per_forward": round(event.tokens / max(1, event.nfe), 4)}
                yield _frame(frame)
            elif isinstance(event, Done):
                over = True
                if include_usage:
                    yield _frame({"id": ident, "object": kind, "created": created, "model": model, "choices": [],
                                  "usage": _usage(event)})
                break
            elif isinstance(event, Failed):
                over = True
                yield _frame(error_body(event.status, event.message,
                                        code="internal_error" if event.status == 500 else None))
                break
        yield "data: [DONE]\n\n"
    finally:
        if not over:
            engine.cancel(job)

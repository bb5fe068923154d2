"""The OpenAI-compatible HTTP server (FastAPI) over the engine.

Routes: ``GET /v1/models``, ``POST /v1/completions`` (``suffix`` = fill in the middle),
``POST /v1/chat/completions`` (both with ``response_format``; chat with ``tools``), ``POST /v1/edits``
(docs/control.md), ``GET /health`` (503 until the model is loaded), ``GET /metrics``
(Prometheus text), ``GET /version``, ``GET /`` (the playground page) and ``/static/*``.
The streaming contract (SSE chunks, draft frames, stats) is in docs/serving.md.
"""
from __future__ import annotations

import asyncio
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
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..backend import Backend
from ..chat import ChatTemplateError
from ..engine import Engine, EngineConfig, Request as EngineRequest
from ..prompting import chat_ids, fewest_tokens, text_ids
from ..sampling.canvas import fixed_length
from ..sampling.policy import resolve_policy
from ..sampling.types import GenerationError
from .errors import APIError, api_error_handler, http_handler, unexpected_handler, validation_handler
from .guard import RequestGuard
from . import control
from .logprobs import completion_ids, logprobs_object
from .metrics import Histogram, render_metrics
from .prompts import prompt_ids, split_prompts
from .responses import serve_jobs
from .schemas import (MAX_LOGPROBS, MAX_STOP_CHARS, MAX_STOPS, POLICY_FIELDS, ChatRequest, CompletionRequest, Decoding,
                      EditRequest)
from .tokenize_routes import add_tokenizer_routes

STATIC = Path(__file__).parent / "static"
MAX_PROMPTS = 64  # prompts in one /v1/completions request (each is one engine request)
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
    threads: int | None = None  # torch threads for decoding; None leaves torch's setting alone
    threads_source: str = ""  # where that number came from (``quicksilver.threads``), for the log
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


def _apply_threads(settings: ServerSettings) -> None:
    """Set and log the torch thread count the CLI picked (``quicksilver.threads``)."""
    if settings.threads is None:
        return
    import torch

    torch.set_num_threads(settings.threads)
    log.info("torch threads: %d (%s)", settings.threads, settings.threads_source or "set")


def create_app(settings: ServerSettings | None = None, backend: Backend | None = None,
               loader: Callable[[ServerSettings], Backend] | None = None) -> FastAPI:
    """The app.  The model loads in a background thread at startup (``/health`` is 503 meanwhile),
    from ``backend`` when given, else ``loader`` (default: ``quicksilver.api.load_backend(settings.model)``)."""
    settings = settings or ServerSettings()
    state = ServerState(settings)

    def load_in_background() -> None:
        try:
            _apply_threads(settings)
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
        plan = await asyncio.to_thread(_completion_plan, body, backend_, not settings.special_tokens_in_text)
        if plan.score_only:  # max_tokens 0 with echo: the prompts, scored when asked, nothing generated
            return await asyncio.to_thread(_echo_only, plan, body, backend_)
        if control.response_schema(body.response_format) is not None:
            if plan.suffix is not None:
                raise APIError(400, "suffix cannot be combined with response_format", "suffix")
            jobs = [await control.structured_job(body, ids, backend_) for ids in plan.ids]
        else:
            jobs = [control.corrected_job(body, ids, plan.suffix, _job(body, ids, plan.suffix, backend_, settings),
                                          backend_) for ids in plan.ids]
        finalize = None
        if body.echo or plan.top is not None:
            def finalize(result: dict, finished: dict) -> None:
                _add_echo_and_logprobs(result, finished, plan, body, backend_)
        return await serve_jobs(request, engine, jobs, body, backend_.name, chat=False,
                            echo=plan.texts if body.echo else None, finalize=finalize)

    add_tokenizer_routes(app, state.ready)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        backend_, engine = state.ready()
        _check_common(body, backend_, settings)
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        if body.logprobs not in (None, False):
            raise APIError(400, "logprobs are not supported on chat completions; /v1/completions reports them "
                                "for autoregressive models", "logprobs")
        messages = [m.model_dump() for m in body.messages]
        tools = control.chosen_tools(body)
        if tools is not None:
            if body.stream:
                raise APIError(400, "stream is not supported with tools; call without stream", "stream")
            messages = control.tool_messages(messages, tools)
        _refuse_far_too_long(backend_, "".join(_message_text(m) for m in messages))
        try:
            ids = await asyncio.to_thread(chat_ids, backend_, messages, not settings.special_tokens_in_text)
        except ChatTemplateError as e:
            raise APIError(400, str(e), "messages") from None
        if not ids:
            raise APIError(400, "the messages render to an empty prompt", "messages")
        if body.max_tokens == 0:
            raise APIError(400, "max_tokens must be at least 1", "max_tokens")
        if tools is not None:
            job = await control.tool_job(body, ids, backend_, tools)
            response = await serve_jobs(request, engine, [job], body, backend_.name, chat=True)
            return control.as_tool_call(response) if isinstance(response, dict) else response
        if control.response_schema(body.response_format) is not None:
            job = await control.structured_job(body, ids, backend_)
        else:
            job = control.corrected_job(body, ids, None, _job(body, ids, None, backend_, settings), backend_)
        return await serve_jobs(request, engine, [job], body, backend_.name, chat=True)

    @app.post("/v1/edits")
    async def edits(body: EditRequest, request: Request):
        """Regenerate spans of ``input`` (docs/control.md); the answer has the completion shape."""
        backend_, engine = state.ready()
        _check_common(body, backend_, settings)
        _refuse_far_too_long(backend_, body.input + (body.instruction or ""))
        job = control.edit_job(body, backend_, not settings.special_tokens_in_text)
        response = await serve_jobs(request, engine, [job], body, backend_.name, chat=False)
        if isinstance(response, dict):
            response["object"] = "edit"
        return response

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
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop takes at most {MAX_STOPS} sequences, got {len(stops)}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise APIError(400, f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters", "stop")


# -- /v1/completions: prompts, echo, logprobs -----------------------------------------------------------
@dataclass
class CompletionPlan:
    """What a completions request asks for, checked: its prompts as ids (and as text, for echo), the
    suffix, and how many top alternatives ``logprobs`` wants (None: no logprobs)."""
    ids: list[list[int]]
    texts: list[str]
    suffix: list[int] | None
    top: int | None
    score_only: bool  # max_tokens 0 with echo


def _completion_plan(body: CompletionRequest, backend: Backend, literal: bool = True) -> CompletionPlan:
    """Checks and tokenizes (CPU work: the route runs it off the event loop).  ``literal``: special-token
    strings in text prompts are text (``prompting.text_ids``)."""
    prompts = split_prompts(body.prompt)
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"prompt holds {len(prompts)} prompts; at most {MAX_PROMPTS} per request", "prompt")
    top = None if body.logprobs is None or body.logprobs is False else int(body.logprobs)
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise APIError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}, got {top}", "logprobs")
    if (top is not None or body.echo) and body.suffix is not None:
        raise APIError(400, "echo and logprobs cannot be combined with suffix", "suffix")
    if top is not None:
        if backend.is_diffusion or not hasattr(backend, "score_ids"):
            raise APIError(400, f"logprobs need an autoregressive model: {backend.name} is a diffusion model, which has "
                                "no exact per-token log-probabilities (only a bound on a whole text's likelihood); "
                                "serve its autoregressive twin (e.g. coder-tiny-ar) to score text", "logprobs")
        if body.stream:
            raise APIError(400, "logprobs are not available when streaming; send stream: false", "logprobs")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens must be at least 1 (0 is allowed with echo, to return or score the prompt "
                            "alone)", "max_tokens")
    ids, texts = [], []
    for i, prompt in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(prompt, str) and prompt == "" and not body.suffix:
            raise APIError(400, f"{where} must not be empty", "prompt")
        if isinstance(prompt, str):
            _refuse_far_too_long(backend, prompt + (body.suffix or ""))
        row = prompt_ids(prompt, backend, i, len(prompts), lambda text: text_ids(backend, text, literal))
        ids.append(row)
        texts.append(prompt if isinstance(prompt, str) else backend.decode(row))
    suffix = text_ids(backend, body.suffix, literal) if body.suffix else None
    if suffix is not None and not suffix and not any(ids):
        raise APIError(400, "prompt and suffix are both empty", "prompt")
    return CompletionPlan(ids, texts, suffix, top, body.max_tokens == 0)


def _echo_only(plan: CompletionPlan, body: CompletionRequest, backend: Backend) -> dict:
    """``max_tokens: 0`` with ``echo``: each prompt returned (and scored) as its choices, nothing decoded."""
    context = backend.context_length
    choices = []
    for i, ids in enumerate(plan.ids):
        if len(ids) > context:
            raise APIError(400, f"this model's maximum context length is {context} tokens, but the prompt has "
                                f"{len(ids)} tokens", "prompt", "context_length_exceeded")
        logprobs = logprobs_object(backend, ids, [], plan.top, echo=True) if plan.top is not None else None
        for j in range(body.n):
            choices.append({"index": i * body.n + j, "text": plan.texts[i], "logprobs": logprobs,
                            "finish_reason": "length"})
    prompt_tokens = sum(len(ids) for ids in plan.ids)
    return {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": int(time.time()),
            "model": backend.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens, "nfe": 0}}


def _add_echo_and_logprobs(result: dict, finished: dict, plan: CompletionPlan, body: CompletionRequest,
                           backend: Backend) -> None:
    """Prefix each choice with its prompt (echo) and attach its ``logprobs`` object; ``finished`` maps
    a choice's index to its ``Finished`` event."""
    for choice in result["choices"]:
        k = choice["index"] // body.n
        start = len(plan.texts[k]) if body.echo else 0
        if plan.top is not None:
            choice["logprobs"] = logprobs_object(backend, plan.ids[k], completion_ids(backend, finished.get(choice["index"])),
                                                 plan.top, body.echo, start)
        if body.echo:
            choice["text"] = plan.texts[k] + choice["text"]


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
    if policy.decoding == "verified" and policy.draft_source != "lookup" and getattr(backend, "drafter", None) is None:
        raise APIError(400, f"verified decoding needs an AR model with a draft head; '{backend.name}' has none",
                       "decoding")
    stops = tuple([body.stop] if isinstance(body.stop, str) else (body.stop or []))
    return EngineRequest(ids, policy, n=body.n, stops=stops, suffix=suffix,
                         drafts=bool(body.diffusing and body.stream
                                     and (backend.is_diffusion or policy.decoding == "verified")))

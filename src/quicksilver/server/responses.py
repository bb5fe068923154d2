"""Answering one request from the engine's events: a JSON body, or an SSE stream of chunks (text
deltas, draft frames, usage) that stays append-only for stock OpenAI clients.  The contract is in
docs/serving.md; ``app.py`` holds the routes that build the engine requests."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine import Delta, Done, Draft, Engine, EngineClosed, Failed, Finished, QueueFull, Request as EngineRequest
from ..sampling.types import GenerationError
from .errors import APIError, error_body
from .schemas import Decoding

PING_S = 15.0  # an SSE comment after this long without an event keeps proxies and clients patient


async def serve_jobs(request: Request, engine: Engine, jobs: list[EngineRequest], body: Decoding, model: str, chat: bool,
                 echo: list[str] | None = None, finalize: Callable[[dict, dict], None] | None = None):
    """Submit ``jobs`` (one per prompt, each with ``n`` rows) and answer with their choices, choice
    ``k * n + j`` being row ``j`` of job ``k``: one JSON body, or an SSE stream.  ``echo``: each
    job's prompt text, sent before its completion; ``finalize(body, finished)`` may amend the JSON
    body (``finished`` maps a choice index to its ``Finished`` event)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    for k, job in enumerate(jobs):
        job.sink = lambda event, k=k: loop.call_soon_threadsafe(events.put_nowait, (k, event))
    submitted: list[EngineRequest] = []
    try:
        for job in jobs:
            engine.submit(job)
            submitted.append(job)
    except (GenerationError, QueueFull, EngineClosed) as e:
        for job in submitted:  # all prompts of a request are served, or none
            engine.cancel(job)
        if isinstance(e, QueueFull):
            raise APIError(429, str(e), code="server_busy") from None
        if isinstance(e, EngineClosed):
            raise APIError(503, str(e), code="shutting_down") from None
        code = "context_length_exceeded" if "context" in str(e) else None
        raise APIError(400, str(e), code=code) from None
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    n = jobs[0].n
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse(engine, jobs, events, ident, created, model, chat, include_usage, body.diffusing, echo)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collect = asyncio.ensure_future(_collect(events, len(jobs), n))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not collect.done():  # the client left (or the server is stopping): free the slots
            for job in jobs:
                engine.cancel(job)
            collect.cancel()
        gone.cancel()
    if collect.cancelled() or not collect.done():
        return JSONResponse(status_code=499, content=None)
    texts, finished, done, failed = collect.result()
    if failed is not None:
        for job in jobs:
            engine.cancel(job)
        raise APIError(failed.status, failed.message, code="internal_error" if failed.status == 500 else None)
    choices = []
    for i in range(len(jobs) * n):
        f = finished.get(i)
        text = f.text if f else texts.get(i, "")
        reason = f.finish_reason if f else "length"
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": reason})
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    result = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
              "model": model, "choices": choices, "usage": _usage(done), "stats": done.stats}
    if finalize is not None:
        finalize(result, finished)
    return result


def _usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens, "nfe": done.nfe}


def _merge_done(dones: list[Done]) -> Done:
    """One request's totals over its prompts: tokens add up; forward passes and time are the most
    any prompt took (they ran side by side)."""
    if len(dones) == 1:
        return dones[0]
    return Done(prompt_tokens=sum(d.prompt_tokens for d in dones), completion_tokens=sum(d.completion_tokens for d in dones),
                nfe=max(d.nfe for d in dones), seconds=max(d.seconds for d in dones),
                choices=sum(d.choices for d in dones), timed_out=any(d.timed_out for d in dones))


async def _collect(events: asyncio.Queue, jobs: int, n: int):
    """Texts and ``Finished`` events by choice index (``k * n + j``), the merged ``Done``, or the
    first ``Failed``."""
    texts: dict[int, str] = {}
    finished: dict[int, Finished] = {}
    dones: dict[int, Done] = {}
    while True:
        k, event = await events.get()
        if isinstance(event, Delta):
            i = k * n + event.index
            texts[i] = texts.get(i, "") + event.text
        elif isinstance(event, Finished):
            finished[k * n + event.index] = event
        elif isinstance(event, Done):
            dones[k] = event
            if len(dones) == jobs:
                return texts, finished, _merge_done([dones[i] for i in range(jobs)]), None
        elif isinstance(event, Failed):
            return texts, finished, None, event


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _frame(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _sse(engine: Engine, jobs: list[EngineRequest], events: asyncio.Queue, ident: str, created: int,
               model: str, chat: bool, include_usage: bool, diffusing: bool, echo: list[str] | None = None):
    """SSE frames: text chunks (append-only), draft frames when asked, finish frames with stats, the
    usage chunk when asked, then ``data: [DONE]``.  Choice ``k * n + j`` is row ``j`` of job ``k``;
    with ``echo`` each choice starts with its prompt's text.  Leaving early (client gone) cancels
    every job."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    started = time.monotonic()
    over = False
    n = jobs[0].n
    dones: dict[int, Done] = {}

    def chunk(index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant"} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}

    try:
        if chat:
            for i in range(len(jobs) * n):
                yield _frame(chunk(i, role=True))
        if echo:
            for k, text in enumerate(echo):
                for j in range(n):
                    if text:
                        yield _frame(chunk(k * n + j, text))
        while True:
            try:
                k, event = await asyncio.wait_for(events.get(), timeout=PING_S)
            except asyncio.TimeoutError:
                yield ": ping\n\n"
                continue
            if isinstance(event, Delta):
                yield _frame(chunk(k * n + event.index, event.text))
            elif isinstance(event, Draft):
                if diffusing:
                    index = k * n + event.index
                    frame = chunk(index)
                    frame["draft"] = {"index": index, "step": event.step, "block": event.block, "tokens": event.tokens}
                    if event.proposed is not None:  # verified decoding: this round's drafts, where proposed
                        frame["draft"]["proposed"] = event.proposed
                    yield _frame(frame)
            elif isinstance(event, Finished):
                frame = chunk(k * n + event.index, finish=event.finish_reason)
                frame["stats"] = {"nfe": event.nfe, "generated_tokens": event.tokens,
                                  "seconds": round(time.monotonic() - started, 4),
                                  "tokens_per_forward": round(event.tokens / max(1, event.nfe), 4)}
                yield _frame(frame)
            elif isinstance(event, Done):
                dones[k] = event
                if len(dones) < len(jobs):
                    continue
                over = True
                if include_usage:
                    total = _merge_done([dones[i] for i in range(len(jobs))])
                    yield _frame({"id": ident, "object": kind, "created": created, "model": model, "choices": [],
                                  "usage": _usage(total)})
                break
            elif isinstance(event, Failed):
                yield _frame(error_body(event.status, event.message,
                                        code="internal_error" if event.status == 500 else None))
                break
        yield "data: [DONE]\n\n"
    finally:
        if not over:
            for job in jobs:
                engine.cancel(job)

"""The serving engine: a bounded request queue and one worker thread that decodes for every request.

No HTTP here.  A caller ``submit``s a ``Request`` with a ``sink`` (a callable the worker thread calls
with each ``Event``); the server's sink hands events to its event loop.  The engine only uses the
``Backend`` protocol (``backend.py``), plus one optional capability:

* **Step-level batching** (``backend.decoder(policy)`` returns a ``BlockDecoder``-like object): the
  worker keeps one decoder per *cohort* (requests whose decoding policies agree, see ``cohort_key``)
  and runs one forward pass per cohort per round for all of the cohort's active rows.  Requests join
  a cohort at a block boundary and leave it at the step in which they finish or are cancelled.
* **Otherwise** (an AR twin, a backend in transformers, and fill-in-the-middle requests) the worker
  serves one request (its ``n`` rows as one batch) at a time through ``generate_ids``/``infill_ids``,
  between rounds of the batched cohorts; ``on_step`` carries the drafts and the cancellation.

Text streaming: blocks are decoded left to right and committed tokens never change, so the text of
a row's positions before its first mask is final.  Each step the engine decodes that prefix and sends
what is new (``Delta``), holding back a possible stop sequence and an incomplete UTF-8 character, so
that the concatenated deltas equal the final text exactly.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backend import Backend
from .sampling.types import DecodePolicy, GenerationError, StepEvent


class EngineError(Exception):
    """Base of the engine's refusals."""


class QueueFull(EngineError):
    """The queue of waiting requests is at its bound (the server answers 429)."""


class EngineClosed(EngineError):
    """The engine is draining or stopped and takes no new requests (the server answers 503)."""


class Cancelled(Exception):
    """Raised inside ``on_step`` to abandon a request served through ``generate_ids``."""


@dataclass
class EngineConfig:
    max_batch: int = 8  # rows decoded at once over all cohorts (a request takes n rows)
    max_queue: int = 64  # requests waiting for a slot; past it ``submit`` raises QueueFull
    time_limit_s: float = 120.0  # per request, from admission; past it the request ends as "length"
    max_n: int = 4  # choices per request


# -- events the worker sends to a request's sink -------------------------------------------------
@dataclass
class Delta:
    index: int
    text: str  # newly final text of choice ``index`` (append-only)


@dataclass
class Draft:
    index: int
    step: int  # forward passes this choice took part in so far
    block: int
    tokens: list[str | None]  # the generated region: None where still masked
    # Verified decoding: the round's drafted tokens where they were proposed (None elsewhere); the
    # accepted ones appear in ``tokens`` of this frame, the rejected ones only here.
    proposed: list[str | None] | None = None


@dataclass
class Finished:
    index: int
    text: str  # the whole final text of the choice
    finish_reason: str  # "stop" | "length"
    tokens: int  # generated tokens (before a stop-sequence cut)
    nfe: int  # forward passes this choice took part in


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int
    nfe: int  # forward passes (the most any choice took part in)
    seconds: float
    choices: int = 1
    timed_out: bool = False

    @property
    def stats(self) -> dict:
        rows_tpf = self.completion_tokens / max(1, self.choices) / max(1, self.nfe)
        out = {"nfe": self.nfe, "generated_tokens": self.completion_tokens, "seconds": round(self.seconds, 4),
               "tokens_per_forward": round(rows_tpf, 4)}
        if self.timed_out:
            out["timed_out"] = True
        return out


@dataclass
class Failed:
    message: str
    status: int = 400  # 400: the request cannot be served as asked; 503: the engine itself failed


Event = Delta | Draft | Finished | Done | Failed


@dataclass
class Request:
    prompt: list[int]
    policy: DecodePolicy  # max_new_tokens is this request's budget
    n: int = 1
    stops: tuple[str, ...] = ()
    suffix: list[int] | None = None  # fill-in-the-middle: decode between prompt and suffix
    drafts: bool = False  # send Draft events
    sink: Callable[[Event], None] = lambda event: None
    id: int = 0
    cancelled: bool = False  # set by ``Engine.cancel`` from any thread; seen at the next step
    submitted: float = field(default_factory=time.monotonic)
    # -- worker state ----------------------------------------------------------------------------
    started: float | None = None
    rows: list["RowState"] = field(default_factory=list)
    done: bool = False


def cohort_key(policy: DecodePolicy, request_id: int) -> tuple:
    """Requests with equal keys share a decoder and its forward passes.  The budget is per row; at
    temperature 0 the seed does not matter; a seeded sampling request gets a decoder (and random
    stream) of its own, so that its output does not depend on what else is being served."""
    seed = None if policy.temperature == 0 else (policy.seed, request_id if policy.seed is not None else None)
    return dataclasses.astuple(dataclasses.replace(policy, max_new_tokens=0, seed=None)) + (seed,)


class RowState:
    """One choice of one request: what has been streamed and whether it is over."""

    def __init__(self, request: Request, index: int, backend: Backend) -> None:
        self.request, self.index, self.backend = request, index, backend
        self.emitted = ""
        self.finished = False
        self.nfe = 0
        self.handle: int | None = None  # row handle in ``decoder`` (a BlockDecoder)
        self.decoder = None
        self.prefix_ids: list[int] = []  # the committed ids before the first mask (up to end of text)
        self.tokens = 0
        self.stop_text: str | None = None  # final text once a stop sequence settled it
        self._max_stop = max((len(s) for s in request.stops), default=0)
        self._checked = -1

    def _cut(self, text: str) -> tuple[str, bool]:
        cut, hit = len(text), False
        for s in self.request.stops:
            i = text.find(s)
            if i != -1 and i < cut:
                cut, hit = i, True
        return text[:cut], hit

    def update(self, region: list[int], step: int, block: int, stop_ids: frozenset[int],
               proposed: list[int] | None = None) -> bool:
        """Send what a step made final (and the draft); True when a stop sequence has settled the row."""
        mask_id = self.backend.mask_id
        self.nfe = step
        if self.request.drafts:
            tokens = [None if t == mask_id else _token_text(self.backend, t) for t in region]
            drafted = None if proposed is None else [None if t == mask_id else _token_text(self.backend, t)
                                                     for t in proposed]
            self.request.sink(Draft(self.index, step, block, tokens, drafted))
        prefix = region[:region.index(mask_id)] if mask_id in region else region
        stop_at = next((i for i, t in enumerate(prefix) if t in stop_ids), None)
        if stop_at is not None:
            prefix = prefix[:stop_at]
        if len(prefix) == self._checked:
            return False
        self._checked = len(prefix)
        self.prefix_ids = prefix
        text = self.backend.decode(prefix).rstrip("\ufffd")  # an incomplete UTF-8 character waits
        safe = len(text) - max(0, self._max_stop - 1)
        settled = False
        if self.request.stops:
            cut, hit = self._cut(text)
            if hit and len(cut) <= len(text) - self._max_stop:  # no other stop can start before it
                self.stop_text, settled = cut, True
                safe = len(cut)
            elif hit:
                safe = min(safe, len(cut))
        if safe > len(self.emitted):
            self._send(text[:safe])
        return settled

    def _send(self, text: str) -> None:
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            self.request.sink(Delta(self.index, text[len(self.emitted):]))
            self.emitted = text

    def finish(self, ids: list[int], ended_by_eos: bool, nfe: int) -> None:
        """The row is over: send the rest of its final text and ``Finished``."""
        if self.finished:
            return
        self.finished = True
        self.nfe = max(self.nfe, nfe)
        if self.stop_text is not None:
            text, hit = self.stop_text, True
        else:
            text, hit = self._cut(self.backend.decode(ids))
        self._send(text)
        reason = "stop" if (hit or ended_by_eos) else "length"
        self.tokens = len(ids)
        self.request.sink(Finished(self.index, text, reason, len(ids), self.nfe))

    def finish_early(self) -> None:
        """Out of time, or settled by a stop sequence: the final text is the committed prefix."""
        self.finish(self.prefix_ids, False, self.nfe)


_TOKEN_TEXT: dict[tuple[int, int], str] = {}


def _token_text(backend: Backend, token_id: int) -> str:
    key = (id(backend), token_id)
    text = _TOKEN_TEXT.get(key)
    if text is None:
        text = backend.token_text(token_id)
        if len(_TOKEN_TEXT) < 1_000_000:
            _TOKEN_TEXT[key] = text
    return text


@dataclass
class Histogram:
    """Cumulative-bucket latency histogram (Prometheus semantics), written by the worker only."""
    bounds: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


@dataclass
class Cohort:
    decoder: object
    waiting: collections.deque = field(default_factory=collections.deque)


class Engine:
    """One worker thread over a ``Backend``.  ``start()``, ``submit(request)``, ``cancel(request)``,
    ``shutdown(drain_s)``; counters for ``/metrics`` in ``stats``."""

    def __init__(self, backend: Backend, config: EngineConfig | None = None) -> None:
        self.backend = backend
        self.config = config or EngineConfig()
        self._lock = threading.Condition()
        self._pending: collections.deque[Request] = collections.deque()
        self._cohorts: dict[tuple, Cohort] = {}
        self._active: list[Request] = []
        self._ids = itertools.count(1)
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._serial: collections.deque[Request] = collections.deque()  # served one at a time
        # Requests accepted and not yet closed, wherever they are (pending, being routed, waiting in a
        # cohort, decoding): the drain waits on this one number, which no hand-over can hide.
        self._open = 0
        self.batched = callable(getattr(backend, "decoder", None))
        # ids that end the text (end of text, and end of turn for chat models); optional for a Backend
        stops = getattr(backend, "stop_ids", None)
        eos = getattr(backend, "eos_id", None)
        self.stop_ids = frozenset(stops if stops is not None else ([] if eos is None else [eos]))
        # counters read by the server's /metrics (only the worker writes them, readers tolerate races)
        self.requests_total: collections.Counter = collections.Counter()  # by outcome
        self.generated_tokens_total = 0
        self.forward_passes_total = 0
        self.latency = Histogram()  # seconds from submission to the end, completed requests
        self.error: str | None = None  # set when the worker died: health turns 503

    # -- the caller's side ------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="quicksilver-engine", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def queued(self) -> int:
        with self._lock:
            # The worker changes the cohorts without the lock; other threads copy before iterating.
            return len(self._pending) + sum(len(c.waiting) for c in list(self._cohorts.values()))

    @property
    def active(self) -> int:
        return len(self._active)

    def submit(self, request: Request) -> Request:
        """Queue ``request`` (after checking it fits the model); raises GenerationError for a request
        that cannot be served, QueueFull when the queue is at its bound, EngineClosed when draining."""
        policy = request.policy
        policy.validate()
        if not 1 <= request.n <= self.config.max_n:
            raise GenerationError(f"n must be between 1 and {self.config.max_n}")
        need = len(request.prompt) + len(request.suffix or []) + policy.max_new_tokens + (3 if request.suffix is not None else 0)
        if need > self.backend.context_length:
            raise GenerationError(
                f"this model's maximum context length is {self.backend.context_length} tokens; the prompt has "
                f"{len(request.prompt) + len(request.suffix or [])} tokens and max_tokens is {policy.max_new_tokens}")
        if not request.prompt and not request.suffix:
            raise GenerationError("the prompt is empty")
        with self._lock:
            if self._closing:
                raise EngineClosed("the server is shutting down")
            if self.queued >= self.config.max_queue:
                raise QueueFull(f"the server is busy: {self.config.max_queue} requests are already waiting")
            request.id = next(self._ids)
            request.rows = [RowState(request, i, self.backend) for i in range(request.n)]
            self._pending.append(request)
            self._open += 1
            self._lock.notify_all()
        return request

    def cancel(self, request: Request) -> None:
        """Abandon ``request``: it leaves the queue, or its rows leave the batch at the next step."""
        request.cancelled = True
        with self._lock:
            self._lock.notify_all()

    def shutdown(self, drain_s: float = 30.0) -> None:
        """Take no new requests; let queued and running ones finish for up to ``drain_s`` seconds,
        then cancel what is left and stop the worker."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self._open and self.alive:
            time.sleep(0.02)
        with self._lock:
            waiting = [r for c in list(self._cohorts.values()) for r in list(c.waiting)]
            for r in list(self._pending) + list(self._active) + waiting + list(self._serial):
                r.cancelled = True
            self._stopped = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stopped and not self._pending and not self._has_work():
                        self._lock.wait(timeout=0.5)
                    if self._stopped and not self._has_work() and not self._pending:
                        return
                    pending = list(self._pending)
                    self._pending.clear()
                for request in pending:
                    self._route(request)
                if not self._round():
                    with self._lock:  # nothing could run (requests wait for slots): do not spin
                        self._lock.wait(timeout=0.01)
                if self._stopped:
                    self._abandon_all()
                    return
        except Exception as e:  # a bug or a device failure: fail every request, health turns 503
            self.error = f"{type(e).__name__}: {e}"
            self._abandon_all(failed=f"the engine stopped: {self.error}")
            raise

    def _has_work(self) -> bool:
        return any(c.waiting or c.decoder.active for c in self._cohorts.values()) or bool(self._serial)

    def _route(self, request: Request) -> None:
        if request.cancelled:
            return self._close(request, "cancelled")
        if self.batched and request.suffix is None:
            key = cohort_key(request.policy, request.id)
            cohort = self._cohorts.get(key)
            if cohort is None:
                decoder = self.backend.decoder(request.policy)
                if decoder is None:
                    self._serial.append(request)
                    return
                cohort = self._cohorts[key] = Cohort(decoder)
            cohort.waiting.append(request)
        else:
            self._serial.append(request)

    def _slots_free(self) -> int:
        return self.config.max_batch - sum(sum(not row.finished for row in r.rows) for r in self._active)

    def _round(self) -> bool:
        """One forward pass for each cohort with active rows; then one serial request if any waits.
        Returns whether anything ran."""
        ran = False
        for key, cohort in list(self._cohorts.items()):
            decoder = cohort.decoder
            self._expire_and_cancel(decoder)
            self._purge(cohort.waiting)
            if decoder.at_boundary:
                while cohort.waiting and cohort.waiting[0].n <= self._slots_free():
                    self._admit(cohort.waiting.popleft(), decoder)
            if decoder.active:
                report = decoder.step()
                self.forward_passes_total += int(report.forward)
                self._after_step(decoder, report)
                ran = True
            elif not cohort.waiting:
                del self._cohorts[key]
        self._purge(self._serial)
        if self._serial and (self._slots_free() >= self._serial[0].n
                             or not any(c.decoder.active for c in self._cohorts.values())):
            self._serve_serial(self._serial.popleft())
            ran = True
        return ran

    def _purge(self, waiting: collections.deque) -> None:
        """Close the waiting requests whose clients left, so they stop counting as queued."""
        if any(r.cancelled for r in waiting):
            for request in [r for r in waiting if r.cancelled]:
                waiting.remove(request)
                self._close(request, "cancelled")

    def _admit(self, request: Request, decoder) -> None:
        request.started = time.monotonic()
        try:
            handles = decoder.admit([request.prompt] * request.n, request.policy.max_new_tokens)
        except GenerationError as e:  # submit checks the context, so only a backend's own limit lands here
            request.sink(Failed(str(e)))
            return self._close(request, "error")
        for row, handle in zip(request.rows, handles):
            row.handle, row.decoder = handle, decoder
        self._active.append(request)

    def _expire_and_cancel(self, decoder) -> None:
        now = time.monotonic()
        for request in list(self._active):
            if not request.rows or request.rows[0].decoder is not decoder:
                continue
            timed_out = request.started is not None and now - request.started > self.config.time_limit_s
            if request.cancelled or timed_out:
                for row in request.rows:
                    if not row.finished and decoder.has(row.handle):
                        if request.cancelled:
                            row.finished = True
                        else:
                            row.finish_early()
                        decoder.release(row.handle)
                if all(r.finished for r in request.rows):
                    self._close(request, "cancelled" if request.cancelled else "timeout", timed_out=timed_out)

    def _after_step(self, decoder, report) -> None:
        finished = set(report.finished)
        for request in list(self._active):
            touched = False
            for row in request.rows:
                if row.finished or row.decoder is not decoder or not decoder.has(row.handle):
                    continue
                h = row.handle
                if h in report.ran:
                    touched = True
                    if row.update(decoder.region(h), decoder.forwards(h), decoder.block(h), self.stop_ids) \
                            and h not in finished:  # a stop sequence settled it: free the slot now
                        row.finish_early()
                        decoder.release(h)
                        continue
                if h in finished:
                    touched = True
                    ids, eos = decoder.result(h)
                    row.finish(ids, eos, decoder.forwards(h))
                    decoder.release(h)
            if touched and all(r.finished for r in request.rows):
                self._close(request, "ok")

    def _serve_serial(self, request: Request) -> None:
        """One request through ``generate_ids``/``infill_ids``; ``on_step`` streams and cancels."""
        if request.cancelled:
            return self._close(request, "cancelled")
        request.started = time.monotonic()
        self._active.append(request)
        timed_out = False

        def watcher(rows: list[RowState]) -> Callable[[StepEvent], None]:
            def on_step(event: StepEvent) -> None:
                nonlocal timed_out
                self.forward_passes_total += 1
                drafts = event.draft.tolist() if getattr(event, "draft", None) is not None else [None] * len(rows)
                for row, region, proposed in zip(rows, event.canvas.tolist(), drafts):
                    if row.stop_text is None:
                        row.update(region, event.step, event.block, self.stop_ids, proposed)
                if request.cancelled:
                    raise Cancelled()
                if time.monotonic() - request.started > self.config.time_limit_s:
                    timed_out = True
                    raise Cancelled()
                if all(row.stop_text is not None for row in rows):
                    raise Cancelled()  # every choice is settled by a stop sequence
            return on_step

        try:
            if request.suffix is not None:  # one hole at a time; choice i samples with seed + i
                for i, row in enumerate(request.rows):
                    seed = None if request.policy.seed is None else request.policy.seed + i
                    policy = dataclasses.replace(request.policy, seed=seed)
                    try:
                        result = self.backend.infill_ids(request.prompt, request.suffix, policy, watcher([row]))
                        row.finish(result.ids[0], result.finished[0], result.nfe)
                    except Cancelled:
                        if request.cancelled:
                            raise
                        row.finish_early()
                        if timed_out:
                            raise
            else:
                policy = dataclasses.replace(request.policy)
                result = self.backend.generate_ids([request.prompt] * request.n, policy, watcher(request.rows))
                for row, ids, fin in zip(request.rows, result.ids, result.finished):
                    row.finish(ids, fin, result.nfe)
        except Cancelled:
            if not request.cancelled:  # settled by stop sequences or out of time: the final prefix
                for row in request.rows:
                    row.finish_early()
        except GenerationError as e:
            request.sink(Failed(str(e)))
            return self._close(request, "error")
        self._close(request, "cancelled" if request.cancelled else ("timeout" if timed_out else "ok"),
                    timed_out=timed_out)

    def _close(self, request: Request, outcome: str, timed_out: bool = False) -> None:
        if request.done:
            return
        request.done = True
        with self._lock:
            self._open -= 1
        if request in self._active:
            self._active.remove(request)
        self.requests_total[outcome] += 1
        tokens = sum(r.tokens for r in request.rows)
        self.generated_tokens_total += tokens
        seconds = time.monotonic() - (request.started or request.submitted)
        if outcome in ("ok", "timeout"):
            self.latency.observe(time.monotonic() - request.submitted)
            nfe = max((r.nfe for r in request.rows), default=0)
            request.sink(Done(len(request.prompt) + len(request.suffix or []), tokens, nfe, seconds, request.n,
                              timed_out))

    def _abandon_all(self, failed: str | None = None) -> None:
        rest = list(self._active) + list(self._pending) + list(self._serial)
        for c in self._cohorts.values():
            rest += list(c.waiting)
        for request in rest:
            if failed and not request.done:
                request.sink(Failed(failed, 503))
            self._close(request, "error" if failed else "cancelled")

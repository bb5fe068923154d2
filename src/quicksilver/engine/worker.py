"""The engine: a bounded request queue and one worker thread that decodes for every request.

``submit`` checks a request and queues it; the worker thread routes queued requests to the scheduler
(``scheduler.py``), runs the round it plans (one forward pass per cohort, or one serial request
whole), streams each step's text through ``streamer.RowState`` and closes requests.  Counters for
``/metrics`` are written here, by the worker only; the server renders them (``server/metrics.py``).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable

from ..backend import Backend
from ..sampling.canvas import fixed_length
from ..sampling.types import GenerationError, StepEvent
from .scheduler import Scheduler
from .streamer import RowState
from .types import Cancelled, Done, EngineClosed, EngineConfig, Failed, QueueFull, Request

log = logging.getLogger("quicksilver.engine")


class Engine:
    """One worker thread over a ``Backend``.  ``start()``, ``submit(request)``, ``cancel(request)``,
    ``shutdown(drain_s)``; counters for ``/metrics``."""

    def __init__(self, backend: Backend, config: EngineConfig | None = None,
                 on_close: Callable[[str, float], None] | None = None) -> None:
        self.backend = backend
        self.config = config or EngineConfig()
        self.scheduler = Scheduler(backend, self.config)
        self._lock = threading.Condition()
        self._pending: collections.deque[Request] = collections.deque()
        self._ids = itertools.count(1)
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        # Requests accepted and not yet closed, wherever they are (pending, being routed, waiting in a
        # cohort, decoding): the drain waits on this one number, which no hand-over can hide.
        self._open = 0
        # ids that end the text (end of text, and end of turn for chat models); optional for a Backend
        stops = getattr(backend, "stop_ids", None)
        eos = getattr(backend, "eos_id", None)
        self.stop_ids = frozenset(stops if stops is not None else ([] if eos is None else [eos]))
        # counters read by the server's /metrics (only the worker writes them, readers tolerate races)
        self.requests_total: collections.Counter = collections.Counter()  # by outcome
        self.generated_tokens_total = 0
        self.forward_passes_total = 0
        self.on_close = on_close  # (outcome, seconds from submission) of every request that ends
        self.error: str | None = None  # set when the worker died: health turns 503

    @property
    def batched(self) -> bool:
        return self.scheduler.batched

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
            return len(self._pending) + self.scheduler.queued()

    @property
    def active(self) -> int:
        return len(self.scheduler.active)

    def submit(self, request: Request) -> Request:
        """Queue ``request`` (after checking it fits the model); raises GenerationError for a request
        that cannot be served, QueueFull when the queue is at its bound, EngineClosed when draining."""
        policy = request.policy
        policy.validate()
        if not 1 <= request.n <= self.config.max_n:
            raise GenerationError(f"n must be between 1 and {self.config.max_n}")
        if fixed_length(request.prompt, request.suffix) + policy.max_new_tokens > self.backend.context_length:
            raise GenerationError(
                f"this model's maximum context length is {self.backend.context_length} tokens; the prompt has "
                f"{len(request.prompt) + len(request.suffix or [])} tokens and max_tokens is {policy.max_new_tokens}")
        if not request.prompt and not request.suffix and request.run is None:
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
            for r in list(self._pending) + list(self.scheduler.active) + self.scheduler.waiting():
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
                    while not self._stopped and not self._pending and not self.scheduler.has_work():
                        self._lock.wait(timeout=0.5)
                    if self._stopped and not self.scheduler.has_work() and not self._pending:
                        return
                    pending = list(self._pending)
                    self._pending.clear()
                for request in pending:
                    if request.cancelled:
                        self._close(request, "cancelled")
                    else:
                        try:
                            self.scheduler.route(request)
                        except Exception as e:  # e.g. the backend cannot build a decoder for this policy
                            self._fail(request, e)
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

    def _round(self) -> bool:
        """Run what the scheduler plans: one forward pass per cohort, then a serial request if its turn
        has come.  Returns whether anything ran."""
        plan = self.scheduler.plan(time.monotonic())
        for request, message in plan.failed:
            request.sink(Failed(message))
            self._close(request, "error")
        for request, error in plan.crashed:
            self._fail(request, error)
        for request, outcome, timed_out in plan.close:
            self._close(request, outcome, timed_out=timed_out)
        for cohort in plan.step:
            try:
                report = cohort.decoder.step()
                self.forward_passes_total += int(report.forward)
                self._after_step(cohort.decoder, report)
            except Exception as e:  # the decoder's state is unknown now: fail its requests, drop it
                for request in [r for r in self.scheduler.active if r.rows and r.rows[0].decoder is cohort.decoder]:
                    self._fail(request, e)
                for request in self.scheduler.drop(cohort):  # not started: a fresh decoder
                    try:
                        self.scheduler.route(request)
                    except Exception as again:
                        self._fail(request, again)
        if plan.serial is not None:
            self._serve_serial(plan.serial)
        return bool(plan.step) or plan.serial is not None

    def _after_step(self, decoder, report) -> None:
        """Stream what the step made final; finish the rows that ended (or a stop sequence settled)."""
        finished = set(report.finished)
        for request in list(self.scheduler.active):
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
        self.scheduler.active.append(request)
        timed_out = False

        def watcher(rows: list[RowState]) -> Callable[[StepEvent], None]:
            def on_step(event: StepEvent) -> None:
                nonlocal timed_out
                self.forward_passes_total += 1
                for row, region in zip(rows, event.canvas.tolist()):
                    if row.stop_text is None:
                        row.update(region, event.step, event.block, self.stop_ids)
                if request.cancelled:
                    raise Cancelled()
                if time.monotonic() - request.started > self.config.time_limit_s:
                    timed_out = True
                    raise Cancelled()
                if all(row.stop_text is not None for row in rows):
                    raise Cancelled()  # every choice is settled by a stop sequence
            return on_step

        try:
            if request.run is not None:
                result = request.run(dataclasses.replace(request.policy), watcher(request.rows[:1]))
                request.rows[0].finish(result.ids[0], result.finished[0], result.nfe, text=result.texts[0])
            elif request.suffix is not None:  # one fill at a time; choice i samples with seed + i
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
                result = self.backend.generate_ids([request.prompt] * request.n, request.policy,
                                                   watcher(request.rows))
                for row, ids, fin in zip(request.rows, result.ids, result.finished):
                    row.finish(ids, fin, result.nfe)
        except Cancelled:
            if not request.cancelled:  # settled by stop sequences or out of time: the final prefix
                for row in request.rows:
                    row.finish_early()
        except GenerationError as e:
            request.sink(Failed(str(e)))
            return self._close(request, "error")
        except Exception as e:  # this request's failure, not the engine's: it keeps serving
            return self._fail(request, e)
        self._close(request, "cancelled" if request.cancelled else ("timeout" if timed_out else "ok"),
                    timed_out=timed_out)

    def _fail(self, request: Request, error: Exception) -> None:
        """Serving ``request`` raised: log it with an id, answer that request with a 500 naming the id,
        and go on serving the others (a bad input that slipped past the checks, or a model bug,
        should cost one request, not the server)."""
        ident = "err-" + uuid.uuid4().hex[:12]
        log.error("request %s failed (%s): %s: %s", request.id, ident, type(error).__name__, error, exc_info=error)
        if not request.done:
            request.sink(Failed(f"the server failed to serve this request (error id {ident}); it has been logged", 500))
        for row in request.rows:
            if row.decoder is not None and row.handle is not None:
                try:
                    if row.decoder.has(row.handle):
                        row.decoder.release(row.handle)
                except Exception:  # the decoder is being dropped anyway
                    pass
            row.finished = True
        self._close(request, "error")

    def _close(self, request: Request, outcome: str, timed_out: bool = False) -> None:
        if request.done:
            return
        request.done = True
        with self._lock:
            self._open -= 1
        if request in self.scheduler.active:
            self.scheduler.active.remove(request)
        self.requests_total[outcome] += 1
        tokens = sum(r.tokens for r in request.rows)
        self.generated_tokens_total += tokens
        seconds = time.monotonic() - (request.started or request.submitted)
        if outcome in ("ok", "timeout"):
            if self.on_close is not None:
                self.on_close(outcome, time.monotonic() - request.submitted)
            nfe = max((r.nfe for r in request.rows), default=0)
            request.sink(Done(len(request.prompt) + len(request.suffix or []), tokens, nfe, seconds, request.n,
                              timed_out))

    def _abandon_all(self, failed: str | None = None) -> None:
        for request in list(self.scheduler.active) + list(self._pending) + self.scheduler.waiting():
            if failed and not request.done:
                request.sink(Failed(failed, 503))
            self._close(request, "error" if failed else "cancelled")


__all__ = ["Engine"]

"""Which requests decode when: cohorts of requests that share a decoder, admission into the batch at
block boundaries under ``max_batch``, time limits and cancellation.  ``plan`` returns what the worker
should run this round; the scheduler itself runs no model and sends no text.

* **Step-level batching** (``backend.decoder(policy)`` returns a ``BlockDecoder``-like object): one
  decoder per *cohort* (requests whose decoding policies agree, see ``cohort_key``), one forward pass
  per cohort per round for all of the cohort's active rows.  Requests join a cohort at a block boundary
  (a completion or an infill alike: each is a canvas, ``sampling.canvas``) and leave it at the step in
  which they finish or are cancelled.
* **Otherwise** (an AR twin, a backend in transformers) requests wait in the *serial* queue and are
  served one at a time (their ``n`` rows as one batch) between rounds of the cohorts.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field

from ..backend import Backend
from ..sampling.canvas import Canvas
from ..sampling.types import DecodePolicy, GenerationError
from .types import EngineConfig, Request


def cohort_key(policy: DecodePolicy, request_id: int) -> tuple:
    """Requests with equal keys share a decoder and its forward passes.  The budget is per row; at
    temperature 0 the seed does not matter; a seeded sampling request gets a decoder (and random
    stream) of its own, so that its output does not depend on what else is being served."""
    seed = None if policy.temperature == 0 else (policy.seed, request_id if policy.seed is not None else None)
    return dataclasses.astuple(dataclasses.replace(policy, max_new_tokens=0, seed=None)) + (seed,)


def canvas_of(request: Request) -> Canvas:
    """The canvas a request asks the decoder to fill: a completion, or an infill when it has a suffix."""
    budget = request.policy.max_new_tokens
    if request.suffix is None:
        return Canvas.completion(request.prompt, budget)
    return Canvas.infill(request.prompt, budget, request.suffix)


@dataclass
class Cohort:
    decoder: object
    waiting: collections.deque = field(default_factory=collections.deque)


@dataclass
class Round:
    """What the worker does this round."""
    step: list[Cohort] = field(default_factory=list)  # one forward pass each
    serial: Request | None = None  # then this request, whole
    close: list[tuple[Request, str, bool]] = field(default_factory=list)  # (request, outcome, timed out)
    failed: list[tuple[Request, str]] = field(default_factory=list)  # refused at admission: (request, why)
    crashed: list[tuple[Request, Exception]] = field(default_factory=list)  # admission raised: a bug, not a refusal


class Scheduler:
    def __init__(self, backend: Backend, config: EngineConfig) -> None:
        self.backend, self.config = backend, config
        self.batched = callable(getattr(backend, "decoder", None))  # an optional Backend capability
        self.cohorts: dict[tuple, Cohort] = {}
        self.serial: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []  # admitted, not yet closed

    # -- queues -------------------------------------------------------------------------------------
    def route(self, request: Request) -> None:
        """Into the waiting queue of its cohort, or the serial queue."""
        if self.batched and request.run is None:
            key = cohort_key(request.policy, request.id)
            cohort = self.cohorts.get(key)
            if cohort is None:
                decoder = self.backend.decoder(request.policy)
                if decoder is None:
                    self.serial.append(request)
                    return
                cohort = self.cohorts[key] = Cohort(decoder)
            cohort.waiting.append(request)
        else:
            self.serial.append(request)

    def waiting(self) -> list[Request]:
        # The worker changes the cohorts without a lock; other threads copy before iterating.
        return [r for c in list(self.cohorts.values()) for r in list(c.waiting)] + list(self.serial)

    def queued(self) -> int:
        return sum(len(c.waiting) for c in list(self.cohorts.values()))

    def has_work(self) -> bool:
        return any(c.waiting or c.decoder.active for c in self.cohorts.values()) or bool(self.serial)

    def slots_free(self) -> int:
        return self.config.max_batch - sum(sum(not row.finished for row in r.rows) for r in self.active)

    # -- a round ------------------------------------------------------------------------------------
    def plan(self, now: float) -> Round:
        """Expire and cancel, admit at block boundaries, and pick the cohorts to step (one forward pass
        each) and then the serial request whose turn it is."""
        out = Round()
        for key, cohort in list(self.cohorts.items()):
            decoder = cohort.decoder
            out.close += self._expire_and_cancel(decoder, now)
            out.close += self._purge(cohort.waiting)
            if decoder.at_boundary:
                while cohort.waiting and cohort.waiting[0].n <= self.slots_free():
                    request = cohort.waiting.popleft()
                    try:
                        error = self._admit(request, decoder, now)
                    except Exception as e:  # one request's failure: the worker answers it with a 500
                        out.crashed.append((request, e))
                        continue
                    if error is not None:
                        out.failed.append((request, error))
            if decoder.active:
                out.step.append(cohort)
            elif not cohort.waiting:
                del self.cohorts[key]
        out.close += self._purge(self.serial)
        if self.serial and (self.slots_free() >= self.serial[0].n or not out.step):
            out.serial = self.serial.popleft()
        return out

    def drop(self, cohort: Cohort) -> list[Request]:
        """Forget a cohort whose decoder failed; returns its waiting requests (not started: they may be
        routed again, to a fresh decoder)."""
        for key, c in list(self.cohorts.items()):
            if c is cohort:
                del self.cohorts[key]
        return list(cohort.waiting)

    def _purge(self, waiting: collections.deque) -> list[tuple[Request, str, bool]]:
        """Waiting requests whose clients left are closed, so they stop counting as queued."""
        gone = [r for r in waiting if r.cancelled]
        for request in gone:
            waiting.remove(request)
        return [(r, "cancelled", False) for r in gone]

    def _admit(self, request: Request, decoder, now: float) -> str | None:
        request.started = now
        try:
            handles = decoder.admit_canvases([canvas_of(request)] * request.n)
        except GenerationError as e:  # submit checks the context, so only a backend's own limit lands here
            return str(e)
        for row, handle in zip(request.rows, handles):
            row.handle, row.decoder = handle, decoder
        self.active.append(request)
        return None

    def _expire_and_cancel(self, decoder, now: float) -> list[tuple[Request, str, bool]]:
        """Rows of cancelled requests leave the decoder; rows out of time end with their final prefix."""
        close = []
        for request in list(self.active):
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
                    close.append((request, "cancelled" if request.cancelled else "timeout", timed_out))
        return close


__all__ = ["Scheduler", "Cohort", "Round", "cohort_key", "canvas_of"]

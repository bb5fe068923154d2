"""What crosses the engine's edge: its configuration, a ``Request``, the events a request's sink
receives, and the engine's refusals.  Plain data; no threads, no model."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..sampling.types import DecodePolicy


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


@dataclass
class Finished:
    index: int
    text: str  # the whole final text of the choice
    finish_reason: str  # "stop" | "length"
    tokens: int  # generated tokens (before a stop-sequence cut)
    nfe: int  # forward passes this choice took part in
    # The generated ids (before a stop-sequence cut, without end of text), whether end of text ended
    # them, and whether a stop sequence cut the text: what the server's ``logprobs`` scores.
    ids: list[int] = field(default_factory=list)
    eos: bool = False
    cut: bool = False


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
    status: int = 400  # 400: the request cannot be served as asked; 500: serving it raised (the engine
    # goes on serving the others); 503: the engine itself failed


Event = Delta | Draft | Finished | Done | Failed


@dataclass
class Request:
    prompt: list[int]
    policy: DecodePolicy  # max_new_tokens is this request's budget
    n: int = 1
    stops: tuple[str, ...] = ()
    suffix: list[int] | None = None  # fill-in-the-middle: decode between prompt and suffix
    drafts: bool = False  # send Draft events
    # A job the backend runs in place of ``generate_ids`` (structured output, edits, correction): called
    # on the worker thread as ``run(policy, on_step)``; returns a one-row ``TextResult`` whose
    # ``texts[0]`` is the final text.  Served one at a time; the engine knows nothing of what it does.
    run: Callable | None = None
    sink: Callable[[Event], None] = lambda event: None
    id: int = 0
    cancelled: bool = False  # set by ``Engine.cancel`` from any thread; seen at the next step
    submitted: float = field(default_factory=time.monotonic)
    # -- worker state ----------------------------------------------------------------------------
    started: float | None = None
    rows: list = field(default_factory=list)  # ``streamer.RowState`` per choice
    done: bool = False


__all__ = ["EngineError", "QueueFull", "EngineClosed", "Cancelled", "EngineConfig", "Delta", "Draft", "Finished",
           "Done", "Failed", "Event", "Request"]

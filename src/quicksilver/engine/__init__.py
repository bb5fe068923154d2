"""The serving engine: a bounded request queue and one worker thread that decodes for every request.

No HTTP here.  A caller ``submit``s a ``Request`` with a ``sink`` (a callable the worker thread calls
with each ``Event``); the server's sink hands events to its event loop.  The engine only uses the
``Backend`` protocol (``backend.py``), plus the optional step-level batching capability
``backend.decoder(policy)``.  In the manner of nano-vllm, one job per module:

* ``types.py``: the configuration, ``Request``, the events (``Delta``, ``Draft``, ``Finished``,
  ``Done``, ``Failed``) and the refusals (``QueueFull``, ``EngineClosed``);
* ``scheduler.py``: cohorts of requests that share a decoder, admission at block boundaries under
  ``max_batch``, time limits and cancellation; ``plan()`` returns what to run this round;
* ``streamer.py``: from each step's canvas to append-only text deltas, stop sequences, drafts;
* ``worker.py``: ``Engine``, the thread that runs the rounds and closes requests (with the counters
  ``/metrics`` reads; the latency histogram lives beside the server, ``server/metrics.py``).
"""
from __future__ import annotations

from .scheduler import Cohort, cohort_key
from .streamer import RowState
from .types import (Cancelled, Delta, Done, Draft, EngineClosed, EngineConfig, EngineError, Event, Failed, Finished,
                    QueueFull, Request)
from .worker import Engine

__all__ = ["Engine", "EngineConfig", "Request", "Event", "Delta", "Draft", "Finished", "Done", "Failed",
           "EngineError", "QueueFull", "EngineClosed", "Cancelled", "RowState", "Cohort", "cohort_key"]

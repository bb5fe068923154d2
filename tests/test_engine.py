"""The engine and the resumable decoder under it: rows join at block boundaries and leave when done or
cancelled, and every row decodes what it would alone; streaming, stops, limits, queue, drain."""
from __future__ import annotations

import dataclasses
import queue
import time

import pytest
import torch

import quicksilver
from quicksilver.backend import Backend
from quicksilver.engine import (Delta, Done, Draft, Engine, EngineClosed, EngineConfig, Failed, Finished, QueueFull,
                                Request)
from quicksilver.sampling import DecodePolicy, GenerationError, generate
from quicksilver.sampling.diffusion import BlockDecoder
from tests.conftest import tiny_model

torch.set_num_threads(1)
MASK, EOS, PAD = 1, 0, 2
PROMPTS = [[10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]]


def small(seed=4):
    return tiny_model(seed=seed, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD, num_hidden_layers=2)


# -- BlockDecoder -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache,refresh", [("none", "full"), ("prefix", "full"), ("dual", "incremental")])
@pytest.mark.parametrize("commit", ["fixed", "threshold"])
def test_rows_that_join_later_decode_what_they_would_alone(cache, refresh, commit):
    m = small()
    policy = DecodePolicy(max_new_tokens=24, block_length=8, cache=cache, refresh=refresh, commit=commit,
                          threshold=0.02, stop_at_eos=False)
    decoder = BlockDecoder(m, policy)
    first = decoder.admit([PROMPTS[0]], 24)[0]
    while not decoder.at_boundary or decoder.nfe == 0:  # into the second block
        decoder.step()
    joined_at = decoder.block(first)
    second = decoder.admit([PROMPTS[1]], 16)[0]  # shorter prompt: left-padded to the block start
    for _ in range(3):
        decoder.step()
    while not decoder.at_boundary:
        decoder.step()
    third = decoder.admit([PROMPTS[2]], 8)[0]  # longer than the block start: the canvas shifts right
    nfe_before = decoder.nfe
    while decoder.active:
        decoder.step()
    assert joined_at == 1 and decoder.nfe > nfe_before
    for handle, prompt, budget in ((first, PROMPTS[0], 24), (second, PROMPTS[1], 16), (third, PROMPTS[2], 8)):
        alone = generate(m, [prompt], dataclasses.replace(policy, max_new_tokens=budget))
        assert decoder.result(handle)[0] == alone.ids[0], (handle, cache, commit)
    # The rows shared forward passes: fewer in all than the three decoded one after another.
    alone_nfe = sum(generate(m, [p], dataclasses.replace(policy, max_new_tokens=b)).nfe
                    for p, b in ((PROMPTS[0], 24), (PROMPTS[1], 16), (PROMPTS[2], 8)))
    assert decoder.nfe < alone_nfe


def test_a_cancelled_row_leaves_at_the_next_step_and_the_others_are_unchanged():
    m = small()
    policy = DecodePolicy(max_new_tokens=16, block_length=8, stop_at_eos=False)
    decoder = BlockDecoder(m, policy)
    a, b = decoder.admit([PROMPTS[0], PROMPTS[1]], 16)
    decoder.step()
    decoder.cancel(b)
    report = decoder.step()
    assert report.ran == [a]
    decoder.release(b)
    while decoder.active:
        decoder.step()
    assert decoder.result(a)[0] == generate(m, [PROMPTS[0]], policy).ids[0]
    # A row admitted after every other row left mid-block starts a fresh canvas.
    c = decoder.admit([PROMPTS[2]], 8)[0]
    while decoder.active:
        decoder.step()
    assert decoder.result(c)[0] == generate(m, [PROMPTS[2]], dataclasses.replace(policy, max_new_tokens=8)).ids[0]


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_released_rows_are_dropped_when_others_join_and_the_rest_are_unchanged(cache):
    m = small()
    policy = DecodePolicy(max_new_tokens=24, block_length=8, cache=cache, stop_at_eos=False)
    decoder = BlockDecoder(m, policy)
    a, b = decoder.admit([PROMPTS[0], PROMPTS[2]], 24)  # b has the longest prompt: its columns go with it
    decoder.step()
    decoder.release(b)
    while not decoder.at_boundary:
        decoder.step()
    width_before = decoder.canvas.shape[1]
    c = decoder.admit([PROMPTS[1]], 8)[0]
    assert decoder.canvas.shape[0] == 2 and decoder.canvas.shape[1] < width_before  # b's row and pads gone
    while decoder.active:
        decoder.step()
    assert decoder.result(a)[0] == generate(m, [PROMPTS[0]], policy).ids[0]
    assert decoder.result(c)[0] == generate(m, [PROMPTS[1]], dataclasses.replace(policy, max_new_tokens=8)).ids[0]


def test_rows_join_only_between_blocks():
    decoder = BlockDecoder(small(), DecodePolicy(max_new_tokens=16, block_length=8))
    decoder.admit([PROMPTS[0]], 16)
    decoder.step()
    assert not decoder.at_boundary
    with pytest.raises(RuntimeError):
        decoder.admit([PROMPTS[1]], 8)
    with pytest.raises(GenerationError):
        BlockDecoder(small(), DecodePolicy()).admit([[]], 8)


# -- the engine over the bundled models ------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    return quicksilver.load("coder-tiny", device="cpu")


@pytest.fixture(scope="module")
def twin():
    return quicksilver.load("coder-tiny-ar", device="cpu")


def submit(engine: Engine, backend, prompt: str, max_tokens: int = 16, **kw) -> tuple[Request, queue.Queue]:
    q: queue.Queue = queue.Queue()
    policy = kw.pop("policy", None) or dataclasses.replace(backend.default_policy, max_new_tokens=max_tokens)
    request = Request(backend.encode(prompt), policy, sink=q.put, **kw)
    engine.submit(request)
    return request, q


def events(q: queue.Queue, timeout: float = 60.0) -> list:
    out = []
    while True:
        event = q.get(timeout=timeout)
        out.append(event)
        if isinstance(event, (Done, Failed)):
            return out


def texts(evs: list) -> tuple[dict[int, str], dict[int, Finished]]:
    streamed: dict[int, str] = {}
    for e in evs:
        if isinstance(e, Delta):
            streamed[e.index] = streamed.get(e.index, "") + e.text
    return streamed, {e.index: e for e in evs if isinstance(e, Finished)}


def test_the_bundled_models_are_backends(lm, twin):
    for backend in (lm, twin):
        assert isinstance(backend, Backend)
        assert backend.context_length == backend.model.config.max_position_embeddings
    assert lm.is_diffusion and not twin.is_diffusion
    assert "<|user|>" in lm.render_chat([{"role": "user", "content": "hi"}])


def test_requests_that_arrive_while_others_decode_share_forward_passes(lm):
    engine = Engine(lm, EngineConfig(max_batch=4)).start()
    try:
        prompts = ["def fibonacci(n):", "import os\n", "class Stack:"]
        first = submit(engine, lm, prompts[0], 32, policy=DecodePolicy(max_new_tokens=32, block_length=8))
        time.sleep(0.3)  # the first is decoding when the others arrive
        rest = [submit(engine, lm, p, 16, policy=DecodePolicy(max_new_tokens=16, block_length=8)) for p in prompts[1:]]
        results = [events(q) for _, q in [first, *rest]]
    finally:
        engine.shutdown(5)
    nfe_alone = 0
    for prompt, evs, budget in zip(prompts, results, (32, 16, 16)):
        streamed, finished = texts(evs)
        alone = lm.generate_ids([lm.encode(prompt)], DecodePolicy(max_new_tokens=budget, block_length=8))
        assert finished[0].text == alone.texts[0] == streamed[0]  # as alone, and streamed == whole
        nfe_alone += alone.nfe
    assert engine.forward_passes_total < nfe_alone  # one forward pass served several requests


def test_stop_sequences_settle_a_row_early_and_drafts_stream(lm):
    engine = Engine(lm).start()
    try:
        free = texts(events(submit(engine, lm, "def fibonacci(n):", 40)[1]))[1][0]
        stop = free.text[10:12]
        evs = events(submit(engine, lm, "def fibonacci(n):", 40, stops=(stop,), drafts=True)[1])
    finally:
        engine.shutdown(5)
    streamed, finished = texts(evs)
    assert finished[0].text == streamed[0] == free.text[:free.text.index(stop)]
    assert finished[0].finish_reason == "stop" and finished[0].nfe < free.nfe
    drafts = [e for e in evs if isinstance(e, Draft)]
    assert drafts and all(len(d.tokens) == 40 for d in drafts) and drafts[0].tokens.count(None) > 30


def test_time_limit_queue_bound_and_drain(lm):
    engine = Engine(lm, EngineConfig(max_batch=1, max_queue=1, time_limit_s=0.5)).start()
    slow = DecodePolicy(max_new_tokens=400, block_length=400)
    try:
        _, q1 = submit(engine, lm, "def f(x):", policy=slow)
        while engine.active == 0:
            time.sleep(0.01)
        _, q2 = submit(engine, lm, "def g(x):", policy=slow)  # waits for the only slot
        with pytest.raises(QueueFull):
            submit(engine, lm, "def h(x):", policy=slow)
    except BaseException:
        engine.shutdown(0)
        raise
    first = events(q1)
    assert first[-1].timed_out and texts(first)[1][0].finish_reason == "length"
    assert engine.requests_total["timeout"] >= 1
    engine.shutdown(drain_s=30)  # the queued one gets its turn and its time limit, then the worker stops
    second = events(q2)
    assert isinstance(second[-1], Done)
    with pytest.raises(EngineClosed):
        submit(engine, lm, "def k(x):")
    assert not engine.alive


def test_a_cancelled_request_frees_its_slot(lm):
    engine = Engine(lm, EngineConfig(max_batch=1)).start()
    try:
        request, q = submit(engine, lm, "def f(x):", policy=DecodePolicy(max_new_tokens=300, block_length=300))
        while engine.active == 0:
            time.sleep(0.01)
        engine.cancel(request)
        evs = events(submit(engine, lm, "def g(x):", 4)[1], timeout=30)  # runs once the slot is free
        assert isinstance(evs[-1], Done)
        assert engine.requests_total["cancelled"] == 1 and engine.active == 0
    finally:
        engine.shutdown(5)


def test_the_ar_twin_streams_and_infills_through_generate_ids(twin):
    engine = Engine(twin).start()
    try:
        evs = events(submit(engine, twin, "def fibonacci(n):", 12)[1])
        fim = events(submit(engine, twin, "def add(a, b):\n    return", 8, suffix=twin.encode("\n\nprint(add(1, 2))\n"),
                            n=2)[1])
    finally:
        engine.shutdown(5)
    streamed, finished = texts(evs)
    alone = twin.generate_ids([twin.encode("def fibonacci(n):")], DecodePolicy(max_new_tokens=12))
    assert finished[0].text == streamed.get(0, "") == alone.texts[0]
    cfg = twin.model.config
    psm = [cfg.fim_prefix_id, *twin.encode("def add(a, b):\n    return"), cfg.fim_suffix_id,
           *twin.encode("\n\nprint(add(1, 2))\n"), cfg.fim_middle_id]
    expected = twin.generate_ids([psm], DecodePolicy(max_new_tokens=8)).texts[0]
    assert [f.text for f in texts(fim)[1].values()] == [expected, expected]  # n=2 at temperature 0

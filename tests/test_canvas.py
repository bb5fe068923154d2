"""One decoder for every canvas: completions, infills and multi-span canvases through the block decoder,
checked against the plain reference sampler (tests/reference_sampler.py), against themselves batched
and cached, and against the outputs of the infilling loop the block decoder replaced."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import quicksilver
from quicksilver.engine import Engine, EngineConfig, Finished, Request
from quicksilver.sampling import Canvas, DecodePolicy, GenerationError, Span, fill, generate
from quicksilver.sampling.stops import never_sample_ids
from tests.conftest import tiny_model
from tests.reference_sampler import reference_fill

torch.set_num_threads(1)
MASK, EOS, PAD = 1, 0, 2
P = [[10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]]
CANVASES = {
    "completion": Canvas.completion(P[0], 16),
    "infill": Canvas.infill(P[1], 12, [70, 71, 72, 73, 74]),
    "infill, long prefix": Canvas.infill(P[2], 9, [80]),
    # The block of 8 from the first mask holds the end of span 1, the fixed part and the start of span 2.
    "two spans": Canvas.of(P[1], Span(5), [50, 51, 52], Span(9), [60, 61]),
    "three spans": Canvas.of(P[0], Span(3), [90], Span(2), [91, 92, 93], Span(4)),
}


def small(seed=4, layers=2, **kw):
    return tiny_model(seed=seed, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD, num_hidden_layers=layers,
                      **kw)


def spans_of(canvas: Canvas, tokens: list[int]) -> list[list[int]]:
    """The span positions of a filled canvas, per span."""
    _, span_of = canvas.layout(MASK)
    return [[t for t, s in zip(tokens, span_of) if s == i] for i in range(len(canvas.spans))]


# -- the canvas ------------------------------------------------------------------------------------------
def test_canvas_layout_and_checks():
    c = Canvas.of([1, 2], [3], Span(2), [], [4], Span(3, allowed=(9, 7, 9)))
    assert c.parts == ((1, 2, 3), Span(2), (4,), Span(3, allowed=(7, 9)))  # fixed parts merge, sets sort
    assert c.prompt == (1, 2, 3) and len(c) == 9 and c.masked_tokens == 5 and c.after_prompt == 6
    assert c.layout(0) == ([1, 2, 3, 0, 0, 4, 0, 0, 0], [-1, -1, -1, 0, 0, -1, 1, 1, 1])
    for bad in (lambda: Canvas.of([1, 2]), lambda: Span(0), lambda: Span(2, allowed=()),
                lambda: Canvas.completion([], 4), lambda: Canvas.infill([], 4, [])):
        with pytest.raises(GenerationError):
            bad()
    with pytest.raises(GenerationError, match="context"):
        fill(small(), [Canvas.infill([5] * 200, 40, [6] * 30)], DecodePolicy())


# -- the oracle ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CANVASES))
@pytest.mark.parametrize("steps", [None, "half"])
def test_the_decoder_fills_every_canvas_as_the_reference_sampler(name, steps):
    m = small()
    canvas = CANVASES[name]
    steps = None if steps is None else canvas.masked_tokens // 2
    policy = DecodePolicy(max_new_tokens=canvas.masked_tokens, block_length=8, steps=steps, stop_at_eos=False)
    tokens, span_of = canvas.layout(MASK)
    expected = reference_fill(m, tokens, [s >= 0 for s in span_of], 8, steps, tuple(never_sample_ids(m.config)))
    result = fill(m, [canvas], policy)
    assert [list(s) for s in result.spans[0]] == [s[:s.index(EOS)] if EOS in s else s for s in spans_of(canvas, expected)]
    if name == "completion":  # a completion canvas is exactly what generate decodes
        assert generate(m, [P[0]], policy).ids == result.ids


# -- batching and caches ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache,refresh", [("none", "full"), ("dual", "incremental")])
@pytest.mark.parametrize("commit,stop", [("fixed", False), ("threshold", True)])
def test_canvases_decoded_together_give_what_each_gives_alone(cache, refresh, commit, stop):
    m = small()
    policy = DecodePolicy(max_new_tokens=16, block_length=8, cache=cache, refresh=refresh, commit=commit,
                          threshold=0.05, stop_at_eos=stop, early_stop=stop)
    canvases = list(CANVASES.values())
    together = fill(m, canvases, policy)
    alone = [fill(m, [c], policy) for c in canvases]
    assert together.spans == [a.spans[0] for a in alone]
    assert together.nfe < sum(a.nfe for a in alone)


@pytest.mark.parametrize("cache,refresh", [("prefix", "full"), ("dual", "full"), ("dual", "incremental")])
@pytest.mark.parametrize("commit", ["fixed", "threshold"])
def test_cached_canvases_equal_uncached_on_a_one_layer_model(cache, refresh, commit):
    """With one layer a position's keys/values depend only on its token and position, so the caches are
    exact: fixed tokens after the block (a suffix) are cached and read as they are."""
    m = small(layers=1)
    base = DecodePolicy(max_new_tokens=16, block_length=4, commit=commit, threshold=0.05, stop_at_eos=False)
    canvases = [CANVASES["infill"], CANVASES["two spans"], CANVASES["infill, long prefix"]]
    uncached = fill(m, canvases, base)
    cached = fill(m, canvases, DecodePolicy(**{**vars(base), "cache": cache, "refresh": refresh}))
    assert cached.spans == uncached.spans
    assert cached.nfe == uncached.nfe


def test_old_and_new_infill_agree():
    """Outputs of the deleted infilling loop (sampling/infill.py), recorded before it went: the bundled
    model and random models (with and without shifted logits), fixed and threshold rules, sampling too."""
    cases = json.loads((Path(__file__).parent / "data" / "infill_before_canvas.json").read_text())
    models = {"coder-tiny": quicksilver.load("coder-tiny", device="cpu").model}
    for shift in (0, 1):
        models[f"tiny-seed7-shift{shift}"] = small(seed=7, logits_shift=bool(shift))
    assert len(cases) == 27 and {c["policy"]["commit"] for c in cases} == {"fixed", "threshold"}
    for case in cases:
        policy = DecodePolicy(**case["policy"])
        result = fill(models[case["model"]], [Canvas.infill(case["prefix"], case["budget"], case["suffix"])], policy)
        assert result.ids[0] == case["fill"], case


# -- what a span allows, and where it ends -----------------------------------------------------------------
def _eos_at(position: int, seed: int = 4):
    """A model sure of end of text at rotary position ``position`` only."""
    m = small(seed=seed)
    hidden_states, head = m.hidden_states, m.head

    def marked(ids, positions=None, attention_mask=None, cache=None):
        h = hidden_states(ids, positions=positions, attention_mask=attention_mask, cache=cache).clone()
        h[..., 0] += 1000.0 * (positions == position)
        return h

    def biased(h):
        at = h[..., 0] > 500
        h = h.clone()
        h[..., 0] -= 1000.0 * at
        out = head(h)
        out[..., EOS] += 50.0 * at
        return out

    m.hidden_states, m.head = marked, biased
    return m


@pytest.mark.parametrize("early", [False, True])
def test_a_span_ends_at_its_stop_and_the_next_span_is_still_filled(early):
    canvas = Canvas.of(P[1], Span(8), [50, 51], Span(6))
    m = _eos_at(len(P[1]) + 3)  # end of text as the 4th token of the first span
    policy = DecodePolicy(max_new_tokens=14, block_length=4, early_stop=early)
    result = fill(m, [canvas], policy)
    first, second = result.spans[0]
    assert len(first) == 3 and len(second) == 6 and EOS not in second
    whole = fill(m, [canvas], DecodePolicy(max_new_tokens=14, block_length=4, stop_at_eos=False))
    assert whole.spans[0][0] == first  # the span's text is the same; its tail was not decoded
    assert result.nfe < whole.nfe
    # A span that may not end early never holds a stop id: it is filled to its length.
    fixed = fill(m, [Canvas.of(P[1], Span(8, may_end_early=False))], policy)
    assert len(fixed.ids[0]) == 8 and EOS not in fixed.ids[0]


def test_allowed_tokens_are_a_logit_mask_per_span():
    m = small()
    digits = tuple(range(100, 110))
    canvas = Canvas.of(P[0], Span(6, allowed=digits, may_end_early=False), [50], Span(5))
    result = fill(m, [canvas, CANVASES["completion"]], DecodePolicy(max_new_tokens=6, block_length=4,
                                                                     commit="threshold", threshold=0.3))
    restricted, free = result.spans[0]
    assert len(restricted) == 6 and set(restricted) <= set(digits)
    assert not set(free) <= set(digits)  # the other span (and the other row) are not restricted
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        fill(m, [Canvas.of(P[0], Span(2, allowed=(10**6,)))], DecodePolicy())


def test_a_span_at_the_start_of_a_shifted_model_reads_its_own_output():
    """Dream-style shifted logits: an infill with an empty prefix has no position before its span;
    batched with a row that has one, each row decodes what it would alone."""
    m = small(seed=7, logits_shift=True)
    canvases = [Canvas.infill([], 8, [40, 41, 42]), Canvas.infill(P[0], 8, [43])]
    policy = DecodePolicy(max_new_tokens=8, block_length=4, stop_at_eos=False)
    together = fill(m, canvases, policy)
    assert together.spans == [fill(m, [c], policy).spans[0] for c in canvases]


def test_window_refuses_a_canvas_with_fixed_tokens_after_its_span():
    with pytest.raises(GenerationError, match="window"):
        fill(small(), [CANVASES["infill"]], DecodePolicy(max_new_tokens=12, window=4))


# -- the engine batches infills -----------------------------------------------------------------------------
def test_the_engine_batches_infills_with_completions():
    import queue

    lm = quicksilver.load("coder-tiny", device="cpu")
    policy = DecodePolicy(max_new_tokens=16, block_length=8)
    jobs = [("def add(a, b):\n    ", "\n\n\ndef sub(a, b):\n    return a - b\n"),
            ("import os\n\n\ndef list_files(folder):\n", "    return out\n"), ("class Stack:", None)]
    engine = Engine(lm, EngineConfig(max_batch=4))
    queues = []
    for prefix, suffix in jobs:  # queued before the worker starts: they join the same first block
        q: queue.Queue = queue.Queue()
        engine.submit(Request(lm.encode(prefix), policy, suffix=None if suffix is None else lm.encode(suffix),
                              sink=q.put))
        queues.append(q)
    engine.start()
    try:
        finished = []
        for q in queues:
            while not isinstance(event := q.get(timeout=60), Finished):
                pass
            finished.append(event)
    finally:
        engine.shutdown(5)
    nfe_alone = 0
    for (prefix, suffix), done in zip(jobs, finished):
        if suffix is None:
            alone = lm.generate_ids([lm.encode(prefix)], policy)
        else:
            alone = lm.infill_ids(lm.encode(prefix), lm.encode(suffix), policy)
        assert done.text == alone.texts[0]
        nfe_alone += alone.nfe
    assert engine.forward_passes_total < nfe_alone

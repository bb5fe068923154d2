"""Correction while refining (``DecodePolicy.correct``): it shows in the drafts, it never touches a
fixed token, and with it off the decoder's outputs are those of the decoder without it."""
from __future__ import annotations

import pytest
import torch

import quicksilver
from quicksilver.control.fill import fill_diffusion
from quicksilver.control.template import Fixed, Slot, Template, layout
from quicksilver.sampling import DecodePolicy, GenerationError
from quicksilver.sampling.correction import edits, reopen_budget, swap_weakest
from quicksilver.sampling import Canvas, fill

torch.set_num_threads(1)
PREFIX = "def mean(xs):\n    total = 0\n    for x in xs:\n"
SUFFIX = "\n    return total / len(xs)\n\n\nprint(mean([1, 2, 3]))\n"


@pytest.fixture(scope="module")
def lm():
    return quicksilver.load("coder-tiny", device="cpu")


def canvas(lm, budget=12):
    return layout(Template([Fixed(PREFIX), Slot(budget), Fixed(SUFFIX)]), lm.encode, lm.mask_id)


def test_rules():
    assert reopen_budget(0.5, 8, 0, 4) == 4 and reopen_budget(0.5, 8, 3, 4) == 0 and reopen_budget(0.5, 8, 0, 1) == 0
    chosen, reopen = swap_weakest(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([True, False, False]),
                                  torch.tensor([0.5, 0.1, 0.95]), budget=2)
    # the best spare proposal (0.8) replaces the weakest committed token (0.1); the next (0.3) is weaker
    # than the next committed one (0.5), so the swapping stops
    assert chosen.tolist() == [True, True, False] and reopen.tolist() == [False, True, False]
    # a proposal is only swapped in for a weaker committed token
    chosen, reopen = swap_weakest(torch.tensor([0.9, 0.05]), torch.tensor([True, False]), torch.tensor([0.5]), 1)
    assert chosen.tolist() == [True, False] and not reopen.any()
    assert edits(torch.tensor([1, 2, 3]), torch.tensor([1, 5, 6]), torch.tensor([0.99, 0.95, 0.5]), 0.9).tolist() == \
        [False, True, False]
    with pytest.raises(GenerationError, match="correct must be"):
        DecodePolicy(correct="always").validate()


@pytest.mark.parametrize("fields", [dict(correct="remask", remask_share=1.0),
                                    dict(correct="edit", edit_threshold=0.05, edit_passes=3),
                                    dict(correct="both", remask_share=1.0, edit_threshold=0.05, temperature=1.0,
                                         seed=3)])
def test_correction_shows_in_drafts_and_never_changes_a_fixed_token(lm, fields):
    lay = canvas(lm)
    fixed = [i for i, t in enumerate(lay.ids) if t != lm.mask_id]
    frames = []
    result = fill_diffusion(lm.model, lm.encode("# mean\n"), lay, DecodePolicy(block_length=12, steps=6, **fields),
                            on_step=lambda e: frames.append(e.canvas[0].tolist()))
    for frame in frames:
        assert [frame[i] for i in fixed] == [lay.ids[i] for i in fixed]
    corrected = any(a[i] != lm.mask_id and b[i] != a[i] for a, b in zip(frames, frames[1:]) for i in range(len(a)))
    assert corrected, "the settings are meant to correct something; the test would prove nothing otherwise"
    text = lay.render(result.values, lm.decode)
    assert text.startswith(PREFIX) and text.endswith(SUFFIX)
    if fields["correct"] == "remask":
        assert result.nfe == 6  # remasking spends no extra forward pass


def test_with_correction_off_outputs_are_those_of_the_block_decoder(lm):
    for prefix, suffix, budget, steps in ((PREFIX, SUFFIX, 12, 12), (PREFIX, SUFFIX, 10, 5), ("import os\n", "\n", 8, 4)):
        lay = layout(Template([Fixed(prefix), Slot(budget), Fixed(suffix)]), lm.encode, lm.mask_id)
        policy = DecodePolicy(block_length=budget, steps=steps)
        ours = fill_diffusion(lm.model, [], lay, policy)
        theirs = fill(lm.model, [Canvas.infill(lm.encode(prefix), budget, lm.encode(suffix))], policy)
        assert ours.values[0] == theirs.ids[0]
        off = fill_diffusion(lm.model, [], lay, DecodePolicy(block_length=budget, steps=steps, correct="remask",
                                                             remask_share=0.0))
        assert off.values == ours.values


def test_generate_with_correction_streams_corrections_and_keeps_the_prompt(lm):
    frames = []
    result = lm.generate("def mean(xs):\n", max_new_tokens=16, steps=8, block_length=16, correct="both",
                         remask_share=1.0, edit_threshold=0.05, on_step=lambda e: frames.append(e.canvas[0].tolist()))
    assert result.nfe >= 8 and result.text
    assert any(a[i] != lm.mask_id and b[i] != a[i] for a, b in zip(frames, frames[1:]) for i in range(len(a)))
    plain = lm.generate("def mean(xs):\n", max_new_tokens=16, steps=8, block_length=16)
    assert plain.text == lm.generate("def mean(xs):\n", max_new_tokens=16, steps=8, block_length=16,
                                     correct="none").text


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_block_decoder_correction_keeps_fixed_tokens_and_off_changes_nothing(lm, cache):
    prefix, suffix = lm.encode(PREFIX), lm.encode(SUFFIX)
    base = dict(max_new_tokens=16, block_length=8, steps=8, cache=cache)
    plain = fill(lm.model, [Canvas.infill(prefix, 16, suffix)], DecodePolicy(**base))
    off = fill(lm.model, [Canvas.infill(prefix, 16, suffix)], DecodePolicy(**base, correct="remask", remask_share=0.0))
    assert off.ids == plain.ids and off.nfe == plain.nfe
    frames = []
    on = fill(lm.model, [Canvas.infill(prefix, 16, suffix)],
              DecodePolicy(**base, correct="both", remask_share=1.0, edit_threshold=0.05, edit_passes=2),
              on_step=lambda e: frames.append(e))
    assert on.nfe > plain.nfe  # the editing passes (remasking alone spends none)
    changed = False
    for a, b in zip(frames, frames[1:]):
        x, y = a.canvas[0].tolist(), b.canvas[0].tolist()
        changed |= any(u != lm.mask_id and v != u for u, v in zip(x, y))
    assert changed
    remask = fill(lm.model, [Canvas.infill(prefix, 16, suffix)],
                  DecodePolicy(**base, correct="remask", remask_share=1.0))
    assert remask.nfe == plain.nfe


def test_block_decoder_correction_never_changes_a_fixed_token_between_spans(lm):
    from quicksilver.sampling import Span
    from quicksilver.sampling.diffusion import BlockDecoder

    canvas = Canvas.of(lm.encode("def f(a, b):\n    c = "), Span(6), lm.encode("\n    return "), Span(5),
                       lm.encode("\n\n\nprint(f(1, 2))\n"))
    decoder = BlockDecoder(lm.model, DecodePolicy(max_new_tokens=11, block_length=8, steps=6, correct="both",
                                                  remask_share=1.0, edit_threshold=0.05, temperature=0.9, seed=1))
    (handle,) = decoder.admit_canvases([canvas])
    row = decoder.book.row_of[handle]
    fixed = (decoder.book.span[row] < 0).clone()
    before = decoder.book.canvas[row][fixed].clone()
    edited = False
    while decoder.active:
        previous = decoder.book.canvas[row].clone()
        decoder.step()
        now = decoder.book.canvas[row]
        assert torch.equal(now[fixed], before)
        edited |= bool(((previous != now) & (previous != lm.mask_id) & (now != lm.mask_id)).any())
    assert edited, "token editing replaced nothing; the test would prove nothing"
    spans = decoder.span_ids(handle)
    assert len(spans) == 2

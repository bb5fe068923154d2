"""Exact block-causal decoding (sampling/block_causal.py): the cached decoder equals the uncached one
token for token, never reruns a finished block, and serves batches, early stop and the engine API."""
import pytest
import torch

from quicksilver.sampling import DecodePolicy, generate
from quicksilver.sampling.block_causal import BlockCausalForward
from quicksilver.sampling.diffusion import BlockDecoder
from tests.conftest import tiny_model

MASK, EOS, PAD = 1, 0, 2
PROMPTS = [[10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36, 37, 38]]


def block_model(seed=0, shift=False, block=4):
    m = tiny_model(seed=seed, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD, block_size=block,
                   logits_shift=shift)
    with torch.no_grad():  # peaked predictions: scores far apart, so rounding cannot reorder them
        m.lm_head.weight.mul_(40)
    return m


def policy(**kw):
    base = dict(max_new_tokens=14, commit="threshold", threshold=0.5, stop_at_eos=False)
    base.update(kw)
    return DecodePolicy(**base)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("rule", [dict(commit="threshold", threshold=0.5), dict(commit="fixed", steps=7),
                                  dict(commit="ordered", threshold=0.5),
                                  dict(commit="factor", factor=2.0), dict(commit="entropy", entropy_bound=1.0),
                                  dict(commit="fixed", steps=14, schedule="dream", score="margin")])
def test_cached_block_decoding_equals_uncached_token_for_token(shift, rule):
    m = block_model(shift=shift)
    for prompts in (PROMPTS, PROMPTS[1:2]):
        uncached = generate(m, prompts, policy(cache="none", **rule))
        cached = generate(m, prompts, policy(cache="prefix", **rule))
        assert cached.ids == uncached.ids
        assert cached.nfe == uncached.nfe
        alone = [generate(m, [p], policy(cache="prefix", **rule)).ids[0] for p in prompts]
        assert cached.ids == alone  # a left-padded batch computes what each row computes alone


def test_decoder_blocks_are_the_models_and_start_at_a_block_boundary():
    m = block_model(block=4)
    decoder = BlockDecoder(m, policy(block_length=32, cache="dual"))
    assert isinstance(decoder.forward, BlockCausalForward) and decoder.policy.block_length == 4
    decoder.admit(PROMPTS, 14)
    for r, prompt in enumerate(PROMPTS):
        start = decoder.book.gen_start[r]
        assert int(decoder.book.positions[r, start]) % 4 == 0  # the generated region starts a block
        # consecutive real positions (offset by fewer than a block)
        real = decoder.book.positions[r, start - len(prompt):start + 14]
        assert torch.equal(real - real[0], torch.arange(len(real)))
        assert 0 <= int(real[0]) < 4


def test_finished_blocks_are_never_recomputed():
    m = block_model(block=4)
    lengths = []
    original = m.hidden_states

    def spy(ids, *args, **kwargs):
        lengths.append(ids.shape[1])
        return original(ids, *args, **kwargs)

    m.hidden_states = spy
    prompt = [10, 11, 12, 13, 14, 15]  # 6 tokens: generation starts at position 8 (offset 2)
    result = generate(m, [prompt], policy(max_new_tokens=12, cache="prefix", threshold=1.0))
    assert result.nfe == 12  # threshold 1.0: one token per step
    # block 1: the prompt + the block; blocks 2, 3: the finished block + the new one; other steps: the block.
    assert lengths == [6 + 4, 4, 4, 4, 8, 4, 4, 4, 8, 4, 4, 4]
    assert sum(lengths) - 3 * 4 * 4 == 6 + 4 + 4  # every clean token ran exactly once


def test_early_stop_and_batches_with_end_of_text():
    m = block_model(shift=True)
    with torch.no_grad():
        m.lm_head.weight[EOS] += 0.4 * m.lm_head.weight[30]  # make end of text likelier for some rows
    base = policy(stop_at_eos=True, early_stop=True, max_new_tokens=16)
    a = generate(m, PROMPTS, DecodePolicy(**{**base.__dict__, "cache": "none"}))
    b = generate(m, PROMPTS, DecodePolicy(**{**base.__dict__, "cache": "prefix"}))
    assert a.ids == b.ids and a.finished == b.finished


def test_streaming_events_cover_every_pass():
    m = block_model()
    events = []
    result = generate(m, PROMPTS, policy(cache="prefix"), on_step=events.append)
    assert len(events) == result.nfe
    final = events[-1].canvas
    for row, ids in enumerate(result.ids):
        assert final[row, :len(ids)].tolist() == ids


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_rows_that_join_later_decode_what_they_would_alone(cache):
    """The engine's step-level batching: rows join between blocks (the canvas shifts and widens, the
    exact cache is rebuilt) and each row still decodes what it decodes alone."""
    import dataclasses

    m = block_model(shift=True)
    pol = policy(max_new_tokens=16, cache=cache)
    decoder = BlockDecoder(m, pol)
    first = decoder.admit([PROMPTS[0]], 16)[0]
    while not decoder.at_boundary or decoder.nfe == 0:
        decoder.step()
    second = decoder.admit([PROMPTS[1]], 12)[0]
    decoder.step()
    while not decoder.at_boundary:
        decoder.step()
    third = decoder.admit([PROMPTS[2]], 8)[0]  # longer prompt: the canvas shifts right
    while decoder.active:
        decoder.step()
    for handle, prompt, budget in ((first, PROMPTS[0], 16), (second, PROMPTS[1], 12), (third, PROMPTS[2], 8)):
        alone = generate(m, [prompt], dataclasses.replace(pol, max_new_tokens=budget))
        assert decoder.result(handle)[0] == alone.ids[0], handle


def test_ordered_rule_never_commits_right_of_a_masked_position():
    """commit="ordered": after every pass the committed positions are a left-aligned run (per row)."""
    m = block_model(shift=True)
    for threshold, passes in ((1.0, lambda nfe: nfe == 14), (0.3, lambda nfe: nfe < 14)):
        events = []
        result = generate(m, PROMPTS, policy(cache="prefix", commit="ordered", threshold=threshold),
                          on_step=events.append)
        assert passes(result.nfe)
        done = torch.zeros_like(events[0].committed)
        for event in events:  # ``committed``: the positions this pass committed
            done |= event.committed
            # left-aligned: once a position is masked, nothing after it is committed
            assert torch.equal(done.long(), done.long().cumprod(dim=-1))
        assert done.all()

import pytest
import torch

from quicksilver.sampling import DecodePolicy, GenerationError, generate
from quicksilver.sampling import rules
from tests.conftest import tiny_model

MASK, EOS = 1, 0


def model(causal=False, seed=0):
    return tiny_model(seed=seed, causal=causal, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=2)


PROMPTS = [[10, 11, 12, 13], [20, 21]]


def test_transfer_counts_follow_the_linear_schedule():
    assert rules.transfer_counts(10, 4) == [3, 3, 2, 2]
    assert rules.transfer_counts(4, 8) == [1, 1, 1, 1]
    assert sum(rules.transfer_counts(32, 7)) == 32


def test_commit_top_picks_highest_scores_among_candidates():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.3, 0.4]])
    cand = torch.tensor([[False, True, True, True], [True, True, True, True]])
    chosen = rules.commit_top(scores, cand, torch.tensor([2, 1]))
    assert chosen.tolist() == [[False, False, True, True], [False, True, False, False]]


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(rules.top_p_filter(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False]]


def test_committed_tokens_never_change_and_every_mask_is_filled():
    m = model()
    policy = DecodePolicy(max_new_tokens=24, block_length=8, steps=12, stop_at_eos=False)
    result = generate(m, PROMPTS, policy, keep_history=True)
    assert result.nfe == 12 == len(result.history)
    previous = None
    for canvas in result.history:
        if previous is not None:
            was_committed = previous != MASK
            assert (canvas[was_committed] == previous[was_committed]).all()
        previous = canvas
    assert (result.history[-1] != MASK).all()


def test_nfe_equals_steps_run_and_blocks_go_left_to_right():
    m = model()
    policy = DecodePolicy(max_new_tokens=16, block_length=4, steps=8, stop_at_eos=False)
    result = generate(m, [PROMPTS[0]], policy, keep_history=True)
    assert result.nfe == 8
    # After the 2nd step the first block (4 positions, 2 steps) is complete and nothing beyond it is.
    second = result.history[1][0]
    assert (second[:4] != MASK).all() and (second[4:] == MASK).all()


def test_one_token_per_step_by_default():
    result = generate(model(), [PROMPTS[0]], DecodePolicy(max_new_tokens=10, block_length=5, stop_at_eos=False),
                      keep_history=True)
    assert result.nfe == 10
    assert [int((h == MASK).sum()) for h in result.history] == list(range(9, -1, -1))  # one commit per step


def test_temperature_zero_is_deterministic():
    m = model()
    policy = DecodePolicy(max_new_tokens=12, block_length=4, steps=6)
    assert generate(m, PROMPTS, policy).ids == generate(m, PROMPTS, policy).ids


def test_same_seed_same_output_different_seed_differs():
    m = model()
    def run(seed):
        policy = DecodePolicy(max_new_tokens=16, block_length=8, steps=8, temperature=1.0, seed=seed,
                              stop_at_eos=False)
        return generate(m, PROMPTS, policy).ids
    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("causal", [False, True])
def test_batched_rows_equal_rows_alone_at_temperature_zero(causal):
    m = model(causal=causal)
    policy = DecodePolicy(max_new_tokens=12, block_length=4, steps=12)
    batch = generate(m, PROMPTS, policy).ids
    alone = [generate(m, [p], policy).ids[0] for p in PROMPTS]
    assert batch == alone


def test_stops_after_the_block_containing_end_of_text():
    m = model()
    # Make end of text the overwhelming favourite at every position.
    bias = torch.zeros(m.config.vocab_size)
    bias[EOS] = 50.0
    original_head = m.head
    m.head = lambda h: original_head(h) + bias
    result = generate(m, [PROMPTS[0]], DecodePolicy(max_new_tokens=32, block_length=8, steps=32))
    assert result.finished == [True]
    assert result.nfe == 8  # one block of 8 single-token steps, then stop: no passes on later blocks
    assert result.ids == [[]]


def test_ar_decoding_counts_prefill_and_stops_at_eos():
    m = model(causal=True)
    result = generate(m, PROMPTS, DecodePolicy(max_new_tokens=9, stop_at_eos=False), keep_history=True)
    assert result.nfe == 9  # prefill gives the first token, 8 more passes for the rest
    for ids, whole in zip(result.ids, result.history[-1].tolist()):  # all 9 decoded, each row cut at end of text
        assert MASK not in whole and ids == (whole[:whole.index(EOS)] if EOS in whole else whole)


def test_bad_requests_raise_generation_errors():
    m = model()
    with pytest.raises(GenerationError, match="empty"):
        generate(m, [[]], DecodePolicy())
    with pytest.raises(GenerationError, match="context"):
        generate(m, [[5] * 250], DecodePolicy(max_new_tokens=64))
    with pytest.raises(GenerationError, match="max_new_tokens"):
        generate(m, [[5]], DecodePolicy(max_new_tokens=0))


def test_python_api_passes_decoding_options_through():
    from quicksilver import load
    lm = load("coder-tiny")
    fast = lm.generate("def f(x):", max_new_tokens=16, commit="threshold", threshold=0.5, cache="prefix")
    direct = generate(lm.model, [lm.encode("def f(x):")],
                      DecodePolicy(max_new_tokens=16, commit="threshold", threshold=0.5, cache="prefix"))
    assert (fast.ids, fast.nfe) == (direct.ids, direct.nfe) and fast.text == lm.decode(direct.ids[0])
    with pytest.raises(GenerationError, match="unknown decoding option: bogus"):
        lm.generate("def f(x):", bogus=1)

"""Fast diffusion decoding: commit rules, prefix/dual KV caches, early stop, batching."""
import pytest
import torch

from quicksilver.model import KVCache
from quicksilver.sampling import DecodePolicy, GenerationError, generate
from quicksilver.sampling import rules
from quicksilver.sampling.diffusion import ContextCache
from tests.conftest import tiny_model

MASK, EOS, PAD = 1, 0, 2
PROMPTS = [[10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34]]


def model(seed=0, **overrides):
    return tiny_model(seed=seed, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD, **overrides)


# -- pure rules ---------------------------------------------------------------------------------
def test_scores_rank_a_peaked_position_above_a_flat_one():
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0], [1.0, 0.9, 0.0, 0.0]])
    tokens = logits.argmax(-1)
    for kind in ("probability", "margin", "entropy"):
        s = rules.score_positions(logits, tokens, kind)
        assert s[0] > s[1], kind
    margin = rules.score_positions(logits, tokens, "margin")
    p = logits.softmax(-1)
    torch.testing.assert_close(margin[1], p[1, 0] - p[1, 1])
    torch.testing.assert_close(rules.entropy(torch.zeros(1, 4)), torch.tensor([torch.log(torch.tensor(4.0))]))


def test_threshold_commits_best_plus_everything_above():
    scores = torch.tensor([[0.95, 0.2, 0.91, 0.5], [0.3, 0.6, 0.1, 0.2]])
    cand = torch.tensor([[True, True, True, True], [True, True, True, False]])
    chosen = rules.commit_threshold(scores, cand, 0.9)
    assert chosen.tolist() == [[True, False, True, False], [False, True, False, False]]
    # Non-candidates are never committed, even above the threshold; a row without candidates commits nothing.
    cand2 = torch.tensor([[False, True, True, True], [False, False, False, False]])
    chosen = rules.commit_threshold(scores, cand2, 0.9)
    assert chosen.tolist() == [[False, False, True, False], [False, False, False, False]]


def test_ordered_rule_commits_the_leftmost_then_the_run_above_threshold():
    scores = torch.tensor([[0.2, 0.95, 0.97, 0.1, 0.99], [0.95, 0.92, 0.5, 0.99, 0.99], [0.1, 0.1, 0.1, 0.1, 0.1]])
    cand = torch.tensor([[True] * 5, [False, True, True, True, True], [False] * 5])
    chosen = rules.commit_ordered(scores, cand, 0.9)
    # Row 0: the leftmost even below the threshold, then the sure run after it, up to the first unsure one.
    # Row 1: position 0 is already committed (not a candidate): the run starts at 1 and stops before 2.
    # Row 2: no candidates, nothing committed.
    assert chosen.tolist() == [[True, True, True, False, False], [False, True, False, False, False], [False] * 5]
    # A committed position inside the run does not break it; at threshold 1.0 only the leftmost goes.
    cand2 = torch.tensor([[True, True, False, True, True]])
    assert rules.commit_ordered(torch.tensor([[0.0, 0.95, 0.0, 0.96, 0.5]]), cand2, 0.9).tolist() == \
        [[True, True, False, True, False]]
    assert rules.commit_ordered(torch.ones(1, 5), cand2, 1.0).tolist() == [[True, False, False, False, False]]


def test_factor_rule_takes_the_longest_accepted_prefix_of_ranks():
    # Sorted: 0.99, 0.8, 0.7, 0.1 -> (k+1)(1-c): 0.02, 0.6, 1.2, 4.5
    probs = torch.tensor([[0.7, 0.99, 0.1, 0.8]])
    cand = torch.ones(1, 4, dtype=torch.bool)
    assert rules.commit_factor(probs, cand, 1.0).tolist() == [[False, True, False, True]]
    assert rules.commit_factor(probs, cand, 1.5).tolist() == [[True, True, False, True]]
    assert rules.commit_factor(probs, cand, 0.01).tolist() == [[False, True, False, False]]  # rank 1 always


def test_entropy_bound_commits_lowest_entropy_within_budget():
    ent = torch.tensor([[0.3, 0.05, 2.0, 0.1]])
    cand = torch.ones(1, 4, dtype=torch.bool)
    assert rules.commit_entropy_bound(ent, cand, 0.2).tolist() == [[False, True, False, True]]
    assert rules.commit_entropy_bound(ent, cand, 0.5).tolist() == [[True, True, False, True]]
    assert rules.commit_entropy_bound(ent, cand, 0.0).tolist() == [[False, True, False, False]]


def test_bad_policy_values_are_generation_errors():
    m = model()
    for bad in (dict(commit="greedy"), dict(cache="full"), dict(score="logit"), dict(factor=0.0)):
        with pytest.raises(GenerationError):
            generate(m, [[5, 6]], DecodePolicy(max_new_tokens=4, **bad))


# -- caches -------------------------------------------------------------------------------------
def _padded_batch(gen_len):
    from quicksilver.sampling.batch import left_pad
    return left_pad(PROMPTS, PAD, gen_len, MASK)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_step_gives_the_logits_of_the_full_pass(mode):
    """A step run against the cache equals the full pass over the canvas the cache was built from,
    for every row of a left-padded batch (positions and padding masks are right)."""
    m = model(num_hidden_layers=3)
    canvas, attention, positions, width = _padded_batch(16)
    canvas[:, width:width + 3] = torch.tensor([40, 41, 42])  # some committed tokens in the first block
    lo, hi = width, width + 8
    full = KVCache(m.config.num_hidden_layers)
    reference = m(canvas, positions=positions, attention_mask=attention, cache=full)[:, lo:hi]
    ctx = ContextCache.from_full(full, attention, lo, hi, mode)
    q_hi = canvas.shape[1] if mode == "prefix" else hi
    logits = m(canvas[:, lo:q_hi], positions=positions[:, lo:q_hi], cache=ctx)[:, :hi - lo]
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    # The context is unchanged by the step: a second step gives the same logits again.
    again = m(canvas[:, lo:q_hi], positions=positions[:, lo:q_hi], cache=ctx)[:, :hi - lo]
    torch.testing.assert_close(again, logits)
    # Wrong positions would be caught: shifting them changes the logits.
    shifted = m(canvas[:, lo:q_hi], positions=positions[:, lo:q_hi] + 1, cache=ctx)[:, :hi - lo]
    assert not torch.allclose(shifted, reference, atol=1e-4)


def test_first_step_is_the_same_for_every_cache_mode():
    m = model(num_hidden_layers=3)
    events = {}
    for mode in ("none", "prefix", "dual"):
        seen = []
        policy = DecodePolicy(max_new_tokens=16, block_length=8, cache=mode, stop_at_eos=False)
        generate(m, PROMPTS, policy, keep_history=True, on_step=lambda e: seen.append(e.canvas.clone()))
        events[mode] = seen[0]
    assert torch.equal(events["none"], events["prefix"]) and torch.equal(events["none"], events["dual"])


@pytest.mark.parametrize("mode,refresh", [("prefix", "full"), ("dual", "full"), ("prefix", "incremental"),
                                          ("dual", "incremental")])
@pytest.mark.parametrize("commit,window", [("fixed", None), ("threshold", None), ("threshold", 4)])
def test_cache_is_exact_when_cached_keys_cannot_change(mode, refresh, commit, window):
    """With one layer, keys/values depend only on each token and its position, so the prefix (and the
    masked suffix) keys/values cannot go stale: cached decoding must reproduce the uncached output,
    on the first block and all later ones."""
    m = model(num_hidden_layers=1, seed=3)
    policy = dict(max_new_tokens=24, block_length=8, commit=commit, threshold=0.05, stop_at_eos=False,
                  window=window)
    base = generate(m, PROMPTS, DecodePolicy(cache="none", **policy), keep_history=True)
    cached = generate(m, PROMPTS, DecodePolicy(cache=mode, refresh=refresh, **policy), keep_history=True)
    assert cached.ids == base.ids and cached.nfe == base.nfe
    assert all(torch.equal(a, c) for a, c in zip(base.history, cached.history))


def test_prefix_cache_on_the_first_block_gives_the_reference_output():
    m = model(num_hidden_layers=1, seed=5)
    policy = dict(max_new_tokens=8, block_length=8, stop_at_eos=False)
    assert (generate(m, PROMPTS, DecodePolicy(cache="prefix", **policy)).ids
            == generate(m, PROMPTS, DecodePolicy(**policy)).ids)


def test_cache_mode_cuts_the_work_per_step():
    """After the refresh, a prefix-cache step runs block + suffix and a dual-cache step only the block."""
    m = model(num_hidden_layers=2)
    lengths = {}
    for mode, extra in (("none", {}), ("prefix", {}), ("dual", {}), ("dual-inc", dict(refresh="incremental")),
                        ("none-w4", dict(window=4)), ("dual-inc-w4", dict(refresh="incremental", window=4))):
        seen = []
        original = m.hidden_states
        m.hidden_states = lambda ids, *a, **k: (seen.append(ids.shape[1]), original(ids, *a, **k))[1]
        generate(m, [PROMPTS[0]], DecodePolicy(max_new_tokens=16, block_length=8, cache=mode.split("-")[0],
                                               stop_at_eos=False, **extra))
        del m.hidden_states
        lengths[mode] = seen
    full = len(PROMPTS[0]) + 16
    assert lengths["none"] == [full] * 16
    assert lengths["prefix"] == ([full] + [16] * 7) + ([full] + [8] * 7)
    assert lengths["dual"] == ([full] + [8] * 7) * 2
    # Incremental: the second block starts from the first block + itself (the prompt is not rerun).
    assert lengths["dual-inc"] == ([full] + [8] * 7) + ([16] + [8] * 7)
    # A window of 4: the first block sees 4 masks after it, the second the rest of the canvas.
    assert lengths["none-w4"] == [full - 4] * 8 + [full] * 8
    assert lengths["dual-inc-w4"] == ([full - 4] + [8] * 7) + ([16] + [8] * 7)


# -- commit rules in the sampler -----------------------------------------------------------------
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_threshold_one_reproduces_one_token_per_step(cache):
    m = model()
    common = dict(max_new_tokens=16, block_length=8, cache=cache, stop_at_eos=False)
    ref = generate(m, PROMPTS, DecodePolicy(**common), keep_history=True)
    thr = generate(m, PROMPTS, DecodePolicy(commit="threshold", threshold=1.0, **common), keep_history=True)
    assert thr.nfe == ref.nfe == 16
    assert all(torch.equal(a, b) for a, b in zip(ref.history, thr.history))


@pytest.mark.parametrize("commit,extra", [("threshold", dict(threshold=0.0)), ("factor", dict(factor=100.0)),
                                          ("entropy", dict(entropy_bound=1e9))])
def test_loose_dynamic_rules_commit_a_whole_block_per_step(commit, extra):
    m = model()
    result = generate(m, PROMPTS, DecodePolicy(max_new_tokens=24, block_length=8, commit=commit,
                                               stop_at_eos=False, **extra))
    assert result.nfe == 3
    assert result.tokens_per_forward > 1


def test_dynamic_rule_needs_fewer_steps_than_reference_on_a_confident_model():
    m = model()
    bias = torch.zeros(m.config.vocab_size)
    bias[100] = 12.0  # token 100 is the clear favourite everywhere
    original = m.head
    m.head = lambda h: original(h) + bias
    result = generate(m, [PROMPTS[0]], DecodePolicy(max_new_tokens=16, block_length=8, commit="threshold",
                                                    threshold=0.9, cache="dual"))
    assert result.ids == [[100] * 16] and result.nfe == 2


# -- early stop -----------------------------------------------------------------------------------
def _eos_from(position, seed=1):
    """A model that is sure of end of text at rotary position ``position`` and unsure (uniform) of
    everything after it, so rows with prompts of different lengths end after different numbers of
    tokens and the positions after end of text are the last a confidence rule would commit."""
    m = model(seed=seed)
    hidden_states, head = m.hidden_states, m.head

    def marked_hidden_states(ids, positions=None, attention_mask=None, cache=None):
        h = hidden_states(ids, positions=positions, attention_mask=attention_mask, cache=cache).clone()
        h[..., 0] += 1000.0 * (positions == position) + 3000.0 * (positions > position)
        return h

    def biased_head(h):
        at, after = (h[..., 0] > 500) & (h[..., 0] < 2500), h[..., 0] > 2500
        h = h.clone()
        h[..., 0] -= 1000.0 * at + 3000.0 * after
        out = head(h)
        out[..., EOS] += 30.0 * at
        return out.masked_fill(after[..., None], 0.0)

    m.hidden_states, m.head = marked_hidden_states, biased_head
    return m


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_early_stop_spends_no_forward_pass_after_end_of_text(cache):
    m = _eos_from(position=len(PROMPTS[0]) + 11)  # end of text as the 12th generated token
    calls, states = [], []
    original = m.hidden_states
    m.hidden_states = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    policy = DecodePolicy(max_new_tokens=32, block_length=16, cache=cache, early_stop=True)
    result = generate(m, [PROMPTS[0]], policy, on_step=lambda e: states.append(e.canvas[0].clone()))
    assert result.finished == [True]
    assert len(calls) == result.nfe == len(states)
    # The stop came right after the first step at which end of text was committed with all before it final.
    def final(c):
        eos = (c == EOS).nonzero()
        return len(eos) > 0 and bool((c[: int(eos[0])] != MASK).all())
    assert [final(c) for c in states] == [False] * (len(states) - 1) + [True]
    late = DecodePolicy(max_new_tokens=32, block_length=16, cache=cache)
    full = generate(m, [PROMPTS[0]], late)
    assert full.ids == result.ids and full.nfe > result.nfe


@pytest.mark.parametrize("refresh", ["full", "incremental"])
def test_early_stop_in_a_batch_keeps_every_row_as_alone(refresh):
    m = _eos_from(position=12, seed=2)
    policy = DecodePolicy(max_new_tokens=32, block_length=8, commit="threshold", threshold=0.5,
                          cache="dual", early_stop=True, refresh=refresh)
    batch = generate(m, PROMPTS, policy)
    alone = [generate(m, [p], policy) for p in PROMPTS]
    assert batch.ids == [a.ids[0] for a in alone]
    assert batch.row_forwards < batch.nfe * len(PROMPTS)  # finished rows left the batch
    blocks = [len(a.ids[0]) // 8 + 1 for a in alone]
    assert len(set(blocks)) > 1 and max(blocks) > 1  # rows left in different blocks, some after the first


# -- batching -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cache,refresh,window", [("none", "full", None), ("prefix", "full", None),
                                                  ("dual", "full", None), ("dual", "incremental", None),
                                                  ("prefix", "incremental", 8), ("none", "full", 8)])
@pytest.mark.parametrize("commit", ["fixed", "threshold"])
def test_batch_equals_single_at_temperature_zero(cache, refresh, window, commit):
    m = model(num_hidden_layers=2, seed=4)
    policy = DecodePolicy(max_new_tokens=24, block_length=8, cache=cache, commit=commit, threshold=0.02,
                          early_stop=True, refresh=refresh, window=window)
    batch = generate(m, PROMPTS, policy).ids
    alone = [generate(m, [p], policy).ids[0] for p in PROMPTS]
    assert batch == alone


def test_first_token_time_and_row_forwards_are_reported():
    m = model()
    r = generate(m, PROMPTS, DecodePolicy(max_new_tokens=8, block_length=8, stop_at_eos=False))
    assert 0 < r.first_token_seconds <= r.seconds
    assert r.row_forwards == r.nfe * len(PROMPTS)
    ar = generate(model(causal=True), PROMPTS, DecodePolicy(max_new_tokens=8, stop_at_eos=False))
    assert 0 < ar.first_token_seconds <= ar.seconds

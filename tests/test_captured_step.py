"""The captured decoding step (static buffers; a CUDA graph on a GPU) computes exactly what the plain
cached step computes.  On CPU the captured path runs the same buffers and function eagerly."""
import pytest
import torch

from quicksilver.model import KVCache
from quicksilver.sampling.captured import CapturedStep
from quicksilver.sampling.diffusion import ContextCache

from conftest import tiny_model


def _full_pass(model, ids, positions, mask=None):
    full = KVCache(model.config.num_hidden_layers)
    model.hidden_states(ids, positions=positions, attention_mask=mask, cache=full)
    return full


def _canvas(seed: int, batch: int, length: int, vocab: int):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    positions = torch.arange(length).expand(batch, length).contiguous()
    return ids, positions


@torch.no_grad()
def test_dual_cache_step_equals_the_uncaptured_step_across_blocks_and_inputs():
    model = tiny_model(seed=1).eval()
    vocab = model.config.vocab_size
    lo, hi, total = 24, 32, 48  # prompt 24, block of 8, suffix of 16: context = 24 + 16
    step = CapturedStep(model, batch=2, context_len=total - (hi - lo), query_len=hi - lo)
    for seed in range(3):  # a new block: a new context loaded into the same buffers
        ids, pos = _canvas(seed, 2, total, vocab)
        ids[:, lo:hi] = model.config.mask_token_id  # the block starts fully masked
        context = ContextCache.from_full(_full_pass(model, ids, pos), None, lo, hi, "dual")
        step.load_cache(context)
        # The first step sees the canvas the context came from: equal to an uncached pass.
        uncached = model.hidden_states(ids, positions=pos)[:, lo:hi]
        torch.testing.assert_close(step.run(ids[:, lo:hi], pos[:, lo:hi]), uncached, rtol=1e-4, atol=1e-5)
        for k in range(3):  # later steps: some of the block committed, the context kept
            block = ids[:, lo:hi].clone()
            block[:, :k + 1] = torch.randint(0, vocab, (2, k + 1), generator=torch.Generator().manual_seed(k))
            want = model.hidden_states(block, positions=pos[:, lo:hi], cache=context)
            assert torch.equal(step.run(block, pos[:, lo:hi]), want)


@torch.no_grad()
def test_padded_context_and_logits():
    model = tiny_model(seed=2).eval()
    ids, pos = _canvas(5, 2, 20, model.config.vocab_size)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :6] = 0  # row 0 has a shorter, left-padded prompt
    pos[0] = (pos[0] - 6).clamp(min=0)
    full = _full_pass(model, ids, pos, mask)
    context = ContextCache.from_full(full, mask, 12, 16, "dual")
    step = CapturedStep(model, batch=2, context_len=16, query_len=4, padded=True, logits=True)
    step.load_cache(context)
    hidden = model.hidden_states(ids[:, 12:16], positions=pos[:, 12:16], cache=context)
    assert torch.equal(step.run(ids[:, 12:16], pos[:, 12:16]), model.head(hidden))
    some = CapturedStep(model, batch=2, context_len=16, query_len=4, padded=True, logits=slice(1, 3))
    some.load_cache(context)
    assert torch.equal(some.run(ids[:, 12:16], pos[:, 12:16]), model.head(hidden[:, 1:3]))
    with pytest.raises(ValueError, match="padding mask"):
        CapturedStep(model, batch=2, context_len=16, query_len=4).load_cache(context)
    # Right-padded queries (a row shorter than the block), as sampling.forward.BlockForward passes them.
    query_mask = torch.ones(2, 4, dtype=torch.long)
    query_mask[1, 2:] = 0
    want = model.hidden_states(ids[:, 12:16], positions=pos[:, 12:16], attention_mask=query_mask, cache=context)
    hidden_step = CapturedStep(model, batch=2, context_len=16, query_len=4, padded=True)
    hidden_step.load_cache(context)
    assert torch.equal(hidden_step.run(ids[:, 12:16], pos[:, 12:16], query_mask), want)
    assert not torch.equal(hidden_step.run(ids[:, 12:16], pos[:, 12:16]), want)  # the mask matters
    with pytest.raises(ValueError, match="built padded"):
        step2 = CapturedStep(model, batch=2, context_len=16, query_len=4)
        step2.run(ids[:, 12:16], pos[:, 12:16], query_mask)


@torch.no_grad()
def test_full_canvas_as_a_step_with_an_empty_context():
    model = tiny_model(seed=4).eval()
    ids, pos = _canvas(9, 1, 24, model.config.vocab_size)
    step = CapturedStep(model, batch=1, context_len=0, query_len=24, logits=slice(8, 16))
    torch.testing.assert_close(step.run(ids, pos), model(ids, positions=pos)[:, 8:16], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_ar_step_of_the_twin_equals_kv_cached_decoding():
    model = tiny_model(seed=3, causal=True, logits_shift=True).eval()
    ids, pos = _canvas(7, 1, 17, model.config.vocab_size)
    cache = _full_pass(model, ids[:, :16], pos[:, :16])
    step = CapturedStep(model, batch=1, context_len=16, query_len=1)
    step.load(cache.keys, cache.values)
    want = model.hidden_states(ids[:, 16:], positions=pos[:, 16:], cache=cache)  # the AR decoder's step
    torch.testing.assert_close(step.run(ids[:, 16:], pos[:, 16:]), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="context of 16"):
        step.load([k[:, :, :8] for k in cache.keys], [v[:, :, :8] for v in cache.values])


def test_a_graph_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the graph path is exercised by scripts/gpu/step_times.py")
    with pytest.raises(ValueError, match="CUDA"):
        CapturedStep(tiny_model(), batch=1, context_len=4, query_len=1, graph=True)

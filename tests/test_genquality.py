"""Generative perplexity, unigram entropy and the block-diffusion NELBO of eval/."""
import math

import torch
import torch.nn.functional as F
from conftest import tiny_model

from quicksilver.diffusion import block_diffusion_loss, block_times
from quicksilver.eval.genquality import generative_perplexity, unigram_entropy
from quicksilver.eval.likelihood import block_nelbo


def test_unigram_entropy_catches_repetition():
    assert unigram_entropy([[5, 5, 5, 5]]) == 0.0
    assert math.isclose(unigram_entropy([[1, 2, 1, 2], [7, 7]]), (math.log(2) + 0.0) / 2)


def test_generative_perplexity_is_the_scorers_conditional_likelihood():
    twin = tiny_model(causal=True, logits_shift=True)
    prompts, completions = [[10, 11, 12], [20, 21]], [[13, 14], [22, 23, 24]]
    ppl = generative_perplexity(twin, prompts, completions)
    nll = 0.0
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            x = torch.tensor([p + c])
            logits = twin(x[:, :-1])[0, len(p) - 1:]
            nll += float(F.cross_entropy(logits, x[0, len(p):], reduction="sum"))
    assert math.isclose(ppl, math.exp(nll / 5), rel_tol=1e-5)


def test_block_nelbo_estimates_the_training_loss():
    torch.manual_seed(0)
    model = tiny_model(block_size=4)
    windows = torch.randint(6, 500, (4, 32))
    est = block_nelbo(model, windows, samples=32, batch_size=32).mean(dim=1).sum() / (4 * 31)
    gen = torch.Generator().manual_seed(1)
    losses = []
    with torch.no_grad():
        for _ in range(32):
            draws = torch.rand(4, 32, generator=gen)
            draws[:, 0] = 2.0  # position 0 is never scored, as in block_nelbo
            out = block_diffusion_loss(model, windows, model.config.mask_token_id, 4, block_times(4, 8, gen), draws)
            losses.append(float(out.nll_sum) / (4 * 31))
    assert abs(float(est) - sum(losses) / len(losses)) < 0.05 * float(est)


def test_block_left_to_right_nll_equals_decoding_token_by_token():
    """The exact left-to-right NLL of a block model equals scoring each token with a plain block-causal
    pass over [clean blocks before ; its block, clean up to it, masked from it] (no [x_t ; x_0] layout)."""
    from quicksilver.eval.likelihood import block_left_to_right_nll

    torch.manual_seed(0)
    windows = torch.randint(6, 500, (3, 16))
    for shift in (False, True):
        model = tiny_model(block_size=4, logits_shift=shift)
        mask = model.config.mask_token_id
        fast = block_left_to_right_nll(model, windows, batch_size=2)
        slow = torch.zeros(3, dtype=torch.float64)
        with torch.no_grad():
            for j in range(1, 16):
                end = (j // 4 + 1) * 4
                ids = windows[:, :end].clone()
                ids[:, j:end] = mask
                logits = model(ids)[:, j - 1 if shift else j]
                slow += F.cross_entropy(logits, windows[:, j], reduction="none").double()
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)

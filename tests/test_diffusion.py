import math

import torch
from torch import nn

from quicksilver.diffusion import (ar_loss, diffusion_loss, fim_transform, mask_tokens, sample_times,
                                   sft_diffusion_loss)


class UniformModel(nn.Module):
    """Logits that are zero everywhere: every prediction is uniform over the vocabulary, so each
    cross-entropy is exactly log(V) and the losses can be checked by hand."""

    def __init__(self, vocab: int, causal: bool = False) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = type("C", (), {"logits_shift": False, "causal": causal})()
        self.dummy = nn.Parameter(torch.zeros(()))

    def hidden_states(self, x, positions=None, attention_mask=None, cache=None):
        return torch.zeros(*x.shape, 1) + 0 * self.dummy

    def head(self, h):
        return h.expand(*h.shape[:-1], self.vocab)

    def forward(self, x, positions=None, attention_mask=None, cache=None):
        return self.head(self.hidden_states(x))


def test_antithetic_times_are_stratified():
    g = torch.Generator().manual_seed(0)
    t = sample_times(8, g)
    raw = (t - 1e-3) / (1 - 1e-3)
    bins = sorted((raw * 8).floor().long().tolist())
    assert bins == list(range(8))  # one time in each eighth of [0, 1)


def test_diffusion_loss_hand_checked():
    vocab, b, n = 10, 2, 6
    x0 = torch.randint(3, vocab, (b, n))
    times = torch.tensor([0.5, 0.25])
    g = torch.Generator().manual_seed(3)
    out = diffusion_loss(UniformModel(vocab), x0, mask_id=0, generator=g, times=times)
    # Replay the same mask draw to count masked tokens per row.
    _, masked = mask_tokens(x0, times, 0, torch.Generator().manual_seed(3))
    expected = sum(masked[r].sum().item() * math.log(vocab) / times[r].item() for r in range(b)) / (b * n)
    assert masked.sum() > 0
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-5)


def test_full_masking_gives_log_vocab_per_token():
    x0 = torch.randint(3, 10, (1, 4))
    out = diffusion_loss(UniformModel(10), x0, 0, torch.Generator().manual_seed(0), times=torch.tensor([1.0]))
    assert math.isclose(out.loss.item(), math.log(10), rel_tol=1e-6)


def test_sft_loss_never_masks_the_prompt_and_normalises_by_answer_length():
    vocab = 10
    x0 = torch.randint(3, vocab, (4, 8))
    prompt_lengths = torch.tensor([2, 3, 5, 7])
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        out = sft_diffusion_loss(UniformModel(vocab), x0, prompt_lengths, 0, g)
        assert out.tokens == int((8 - prompt_lengths).sum())
        assert out.loss.item() >= 0
    answer = torch.arange(8)[None] >= prompt_lengths[:, None]
    xt, masked = mask_tokens(x0, torch.ones(4), 0, torch.Generator().manual_seed(0), maskable=answer)
    assert not masked[~answer].any() and masked[answer].all()
    assert (xt[~answer] == x0[~answer]).all()


def test_ar_loss_uniform_is_log_vocab():
    x = torch.randint(3, 10, (2, 5))
    out = ar_loss(UniformModel(10, causal=True), x)
    assert math.isclose(out.loss.item(), math.log(10), rel_tol=1e-6)
    assert out.tokens == 8


def test_fim_transform_keeps_length_and_tokens():
    x = torch.arange(100, 132).repeat(6, 1)
    out = fim_transform(x, 1, 2, 3, torch.Generator().manual_seed(0), rate=0.5)
    assert out.shape == x.shape
    changed = (out != x).any(dim=1)
    assert 0 < changed.sum() < 6
    for row in out[changed]:
        r = row.tolist()
        assert r[0] == 1 and r.count(2) == 1 and r.count(3) == 1
        body = [t for t in r if t >= 100]
        assert sorted(body) == list(range(100, 129))  # the first L - 3 tokens, rearranged
        i, j, k = r.index(1), r.index(2), r.index(3)
        prefix, suffix, middle = r[i + 1:j], r[j + 1:k], r[k + 1:]
        assert prefix + middle + suffix == list(range(100, 129))

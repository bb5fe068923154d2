"""Likelihood: exact values for a model that knows nothing, agreement with the training losses,
and the stratified mask counts of the NELBO estimator."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from quicksilver.diffusion import ar_loss, diffusion_loss
from quicksilver.eval.likelihood import (ar_nll, diffusion_nelbo, load_windows, mask_counts, run_ppl, summarise,
                                         tokens_per_byte)
from quicksilver.model import Transformer
from tests.conftest import tiny_config


def _model(tokenizer, causal: bool, seed: int = 0, uniform: bool = False) -> Transformer:
    model = Transformer(tiny_config(tokenizer, causal=causal, logits_shift=causal))
    model.reset_parameters(seed=seed)
    if uniform:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # every prediction is uniform over the vocabulary
    return model.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_a_uniform_model_scores_exactly_log_vocab(tiny_dataset, tiny_tokenizer, causal):
    system = SimpleNamespace(model=_model(tiny_tokenizer, causal, uniform=True))
    result = run_ppl(system, tiny_dataset, seq_len=32, windows=4, samples=4, batch_size=8)
    log_v = math.log(tiny_tokenizer.vocab_size)
    assert result["nats_per_token"] == pytest.approx(log_v, rel=1e-5)
    tpb = tokens_per_byte(load_windows(tiny_dataset, 32, 4)[1])
    assert result["bits_per_byte"] == pytest.approx(log_v * tpb / math.log(2), rel=1e-5)
    assert result["scored_tokens"] == 4 * 31
    if not causal:  # every Monte Carlo sample gives the same value: no noise at all
        assert result["se_monte_carlo_bits_per_byte"] == pytest.approx(0.0, abs=1e-9)
        assert "NELBO" in result["estimator"]
    else:
        assert "exact" in result["estimator"] and "se_monte_carlo_bits_per_byte" not in result


def test_ar_nll_matches_the_training_loss(tiny_dataset, tiny_tokenizer):
    model = _model(tiny_tokenizer, causal=True, seed=1)
    x, _ = load_windows(tiny_dataset, 48, 5)
    ours = ar_nll(model, x, batch_size=2)
    assert ours.shape == (5,)
    with torch.no_grad():
        reference = ar_loss(model, x)
    assert float(ours.sum()) == pytest.approx(float(reference.nll_sum), rel=1e-5)


def test_mask_counts_are_stratified():
    gen = torch.Generator().manual_seed(0)
    for scored, samples in ((10, 5), (255, 16), (7, 7), (5, 8)):
        for _ in range(20):
            c = mask_counts(scored, samples, gen)
            assert c.shape == (samples,) and int(c.min()) >= 1 and int(c.max()) <= scored
            if samples <= scored:  # spread evenly: consecutive counts differ by about scored / samples
                gaps = torch.diff(torch.sort(c).values).float()
                assert float(gaps.max()) <= math.ceil(scored / samples) + 1


def test_nelbo_estimate_agrees_with_the_training_loss(tiny_dataset, tiny_tokenizer):
    """Same bound, two estimators: LLaDA's stratified counts here, MDLM's antithetic times in training."""
    model = _model(tiny_tokenizer, causal=False, seed=2)
    x, _ = load_windows(tiny_dataset, 32, 8)
    mc = diffusion_nelbo(model, x, samples=32, batch_size=64, seed=0)
    ours = float(mc.mean()) / 31
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [float(diffusion_loss(model, x, tiny_tokenizer.mask_id, gen).loss) for _ in range(32)]
    theirs = sum(losses) / len(losses)
    assert ours == pytest.approx(theirs, rel=0.03)
    assert ours > 0.5 * math.log(tiny_tokenizer.vocab_size)  # an untrained model is near uniform


def test_standard_error_shrinks_with_more_samples(tiny_dataset, tiny_tokenizer):
    model = _model(tiny_tokenizer, causal=False, seed=3)
    x, meta = load_windows(tiny_dataset, 32, 4)
    tpb = tokens_per_byte(meta)
    few = summarise(diffusion_nelbo(model, x, 4, seed=1).mean(1), 31, tpb, diffusion_nelbo(model, x, 4, seed=1))
    many = summarise(diffusion_nelbo(model, x, 32, seed=1).mean(1), 31, tpb, diffusion_nelbo(model, x, 32, seed=1))
    assert many["se_monte_carlo_bits_per_byte"] < few["se_monte_carlo_bits_per_byte"]


def test_vocabulary_mismatch_is_a_clear_error(tiny_dataset, tiny_tokenizer):
    from quicksilver.data.shards import DatasetError

    model = Transformer(tiny_config(None, vocab_size=600)).eval()
    with pytest.raises(DatasetError, match="vocabulary"):
        run_ppl(SimpleNamespace(model=model), tiny_dataset, seq_len=32, windows=2)


def test_nelbo_reads_shifted_logits_like_the_training_loss():
    """A Dream-style model (position i predicted at i - 1): the twin's weights with bidirectional
    attention score far better read shifted than unshifted, so an estimator that ignored the shift
    would disagree with the training loss by nats, not percent."""
    import dataclasses
    from pathlib import Path

    from quicksilver.loading.checkpoint import load_model

    twin, tokenizer = load_model("coder-tiny-ar", dtype=torch.float32)
    cfg = dataclasses.replace(twin.config, causal=False, logits_shift=True)
    model = Transformer(cfg)
    model.load_state_dict(twin.state_dict())
    model.eval()
    ids = tokenizer.encode(Path(__file__).read_text())  # real Python source
    x = torch.tensor(ids[: 4 * 64]).view(4, 64)
    mc = diffusion_nelbo(model, x, samples=16, batch_size=64, seed=0)
    ours = float(mc.mean()) / 63
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [float(diffusion_loss(model, x, tokenizer.mask_id, gen).loss) for _ in range(16)]
    assert ours == pytest.approx(sum(losses) / len(losses), rel=0.08)

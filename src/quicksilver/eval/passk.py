"""pass@k with the unbiased estimator of Chen et al. (2021).

With ``n`` samples of a problem of which ``c`` pass, the chance that at least one of ``k`` samples
drawn without replacement passes is ``1 - C(n - c, k) / C(n, k)``.  The product form below avoids
huge binomials; it is exact up to floating point.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct out of ``n`` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples per problem (n={n})")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """Mean over problems of pass@k for every k that every problem has enough samples for.

    ``counts`` holds (n, c) per problem; returns {"pass@1": ..., "pass@10": ...}.
    """
    if not counts:
        return {}
    smallest = min(n for n, _ in counts)
    out = {}
    for k in sorted(set(ks)):
        if 1 <= k <= smallest:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out


__all__ = ["pass_at_k", "mean_pass_at_k"]

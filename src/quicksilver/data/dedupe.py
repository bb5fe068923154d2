"""Exact and near-duplicate detection for a corpus, first come first kept.

Exact: sha256 of the text with line endings unified, trailing spaces and blank edge lines removed.
Near: MinHash signatures of the set of 5-grams of whitespace-separated tokens, banded into an LSH index;
a candidate pair found by any band is a duplicate when the signatures agree on at least ``threshold``
of their positions (an estimate of the Jaccard similarity of the two shingle sets).  Everything is
seeded and order-driven, so the same documents in the same order give the same decisions.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier that chains token hashes into a shingle hash
_MAX_TOKEN_CACHE = 4_000_000


def normalized(text: str) -> str:
    """The text an exact duplicate shares: unified line endings, no trailing spaces or blank edges."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def exact_key(text: str) -> bytes:
    return hashlib.sha256(normalized(text).encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class MinHashConfig:
    num_perm: int = 128
    bands: int = 16  # 16 bands of 8 rows: pairs at Jaccard 0.85 become candidates with p ≈ 0.994
    shingle: int = 5
    threshold: float = 0.85
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ValueError("num_perm must be a multiple of bands")
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")


class MinHasher:
    """MinHash signatures over hashed token shingles, vectorised with numpy."""

    def __init__(self, config: MinHashConfig = MinHashConfig()) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        # Multiply-shift hashing: h(x) = ((a*x + b) mod 2^64) >> 32 with odd a, one (a, b) per permutation.
        self.a = rng.integers(1, 2**63, size=config.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=config.num_perm, dtype=np.uint64)
        self._token_hash: dict[str, int] = {}

    def _tokens(self, text: str) -> np.ndarray:
        cache = self._token_hash
        if len(cache) > _MAX_TOKEN_CACHE:  # bounded memory; values do not depend on the cache
            cache.clear()
        out = []
        for token in text.split():
            h = cache.get(token)
            if h is None:
                h = cache[token] = int.from_bytes(
                    hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            out.append(h)
        return np.array(out, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct hashes of every run of ``shingle`` consecutive tokens (one for shorter texts)."""
        tokens = self._tokens(text)
        k = min(self.config.shingle, len(tokens))
        if k == 0:
            return np.zeros(1, dtype=np.uint64)
        n = len(tokens) - k + 1
        with np.errstate(over="ignore"):
            h = tokens[:n].copy()
            for j in range(1, k):
                h = h * _MIX + tokens[j:j + n]
        return np.unique(h)

    def signature(self, text: str) -> np.ndarray:
        shingles = self.shingles(text)
        sig = np.full(self.config.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), 4096):  # bounded temporary: 4096 × num_perm
                block = shingles[start:start + 4096, None] * self.a[None, :] + self.b[None, :]
                np.minimum(sig, block.min(axis=0), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


class Deduper:
    """Keeps the first of every group of exact or near duplicates, in the order documents arrive."""

    def __init__(self, near: MinHashConfig | None = MinHashConfig()) -> None:
        self.near = near
        self.hasher = MinHasher(near) if near else None
        self._exact: dict[bytes, str] = {}
        self._signatures: list[np.ndarray] = []
        self._names: list[str] = []
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(near.bands)] if near else []

    def check(self, name: str, text: str) -> tuple[str, str] | None:
        """None when the text is new (and is remembered), else ("exact" | "near", name of the original)."""
        key = exact_key(text)
        if key in self._exact:
            return "exact", self._exact[key]
        if self.hasher is not None:
            sig = self.hasher.signature(text)
            rows = self.near.num_perm // self.near.bands
            bands = [sig[i * rows:(i + 1) * rows].tobytes() for i in range(self.near.bands)]
            seen: set[int] = set()
            for bucket, band in zip(self._buckets, bands):
                for other in bucket.get(band, ()):
                    if other in seen:
                        continue
                    seen.add(other)
                    if jaccard_estimate(sig, self._signatures[other]) >= self.near.threshold:
                        return "near", self._names[other]
            index = len(self._signatures)
            self._signatures.append(sig)
            self._names.append(name)
            for bucket, band in zip(self._buckets, bands):
                bucket.setdefault(band, []).append(index)
        self._exact[key] = name
        return None

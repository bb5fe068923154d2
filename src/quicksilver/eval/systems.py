"""Systems under test: a local diffusion model, a local AR twin, or any OpenAI-compatible endpoint.

Every evaluation talks to a ``System`` through two calls, ``complete`` (left-to-right completion of
prompts) and ``infill`` (fill the gap between a prefix and a suffix), and gets back ``Completion``s
that carry the decoder's own accounting (generated tokens and forward passes), so every quality
number can be reported beside the decoding setting and tokens per forward that produced it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..sampling import DecodePolicy, GenerationError, generate
from .completion import Completion, Usage, cut_at_stops


# -- decoding settings -------------------------------------------------------------------------------
def policy_from_setting(setting: str, max_new_tokens: int, block_length: int = 32, cache: str = "none",
                        temperature: float = 0.0, seed: int | None = None) -> DecodePolicy:
    """A ``DecodePolicy`` from a short setting string:

    * ``fixed:K``: the reference linear schedule committing K tokens per forward pass (K=1 is
      LLaDA's one-token-per-step reference);
    * ``threshold:T`` / ``factor:F`` / ``entropy:B``: the dynamic commit rules of the fast decoder.
    """
    kind, _, value = setting.partition(":")
    try:
        number = float(value) if value else None
    except ValueError:
        raise GenerationError(f"decoding setting '{setting}' needs a number after the colon") from None
    policy = DecodePolicy(max_new_tokens=max_new_tokens, block_length=min(block_length, max_new_tokens),
                          temperature=temperature, seed=seed, cache=cache)
    if kind == "fixed":
        per_step = 1 if number is None else int(number)
        if per_step < 1 or (number is not None and number != per_step):
            raise GenerationError("fixed:K needs K >= 1 tokens per step")
        policy.steps = max(1, -(-max_new_tokens // per_step))
    elif kind == "threshold":
        policy.commit, policy.threshold = "threshold", 0.9 if number is None else number
    elif kind == "factor":
        policy.commit, policy.factor = "factor", 1.0 if number is None else number
    elif kind == "entropy":
        policy.commit, policy.entropy_bound = "entropy", 0.5 if number is None else number
    else:
        raise GenerationError(f"unknown decoding setting '{setting}': use fixed:K, threshold:T, factor:F or entropy:B")
    if hasattr(policy, "early_stop"):
        policy.early_stop = True  # same outputs, fewer forward passes
    policy.validate()
    return policy


def describe_policy(policy: DecodePolicy, causal: bool) -> str:
    if causal:
        return "autoregressive, greedy" if policy.temperature == 0 else f"autoregressive, T={policy.temperature:g}"
    if policy.commit == "fixed":
        per = policy.max_new_tokens / (policy.steps or policy.max_new_tokens)
        text = f"fixed {per:g} token(s)/step, block {policy.block_length}, cache {policy.cache}"
    else:
        text = policy.describe() if hasattr(policy, "describe") else policy.commit
    return text + ("" if policy.temperature == 0 else f", T={policy.temperature:g}")


class StopDecoding(Exception):
    """Raised from ``on_step`` to end a generation whose every row is already final up to a stop
    sequence (or end of text): ``ids`` holds each row's final ids, ``nfe`` the forward passes so far."""

    def __init__(self, ids: list[list[int]], nfe: int, committed: list[int]) -> None:
        super().__init__("stop sequence reached")
        self.ids, self.nfe, self.committed = ids, nfe, committed  # committed: positions decoded per row


class StopWatcher:
    """An ``on_step`` callback that stops decoding once every row has a stop sequence (or end of text)
    inside its committed prefix.

    Committed tokens never change and blocks are decoded left to right, so the text before the first
    mask of a row is final: a stop sequence found there (ending a margin before the prefix's end, so
    that no longer stop sequence could still start earlier) makes the rest of the row irrelevant once
    it is cut at the stop.  Results are exactly those of a full decode cut at the stop sequences; only
    the forward passes after the point where the answer was settled are saved (and not counted).
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], mask_id: int, eos_id: int) -> None:
        self.tokenizer, self.stops, self.mask_id, self.eos_id = tokenizer, tuple(stops), mask_id, eos_id
        self.margin = max((len(s) for s in self.stops), default=0)
        self.checked: dict[int, int] = {}

    def _settled(self, row: int, ids: list[int]) -> bool:
        prefix = ids[:ids.index(self.mask_id)] if self.mask_id in ids else ids
        if self.eos_id in prefix:
            return True
        if self.checked.get(row) == len(prefix):
            return False
        self.checked[row] = len(prefix)
        text = self.tokenizer.decode(prefix)
        return any(0 <= text.find(s) <= len(text) - self.margin - len(s) for s in self.stops)

    def __call__(self, event) -> None:
        canvas = event.canvas.tolist()
        if all(self._settled(r, ids) for r, ids in enumerate(canvas)):
            rows, committed = [], []
            for ids in canvas:
                prefix = ids[:ids.index(self.mask_id)] if self.mask_id in ids else ids
                rows.append(prefix[:prefix.index(self.eos_id)] if self.eos_id in prefix else prefix)
                upto = ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids
                committed.append(sum(1 for t in upto if t != self.mask_id))
            raise StopDecoding(rows, event.step, committed)


def _fit(ids: list[int], budget: int, keep: str) -> list[int]:
    if len(ids) <= budget:
        return ids
    return ids[len(ids) - budget:] if keep == "end" else ids[:budget]


def fit_context(prefix: list[int], suffix: list[int], available: int) -> tuple[list[int], list[int]]:
    """Cut prefix (from the left) and suffix (from the right) so that together they fit ``available``."""
    keep_suffix = min(len(suffix), available // 2)
    keep_prefix = min(len(prefix), available - keep_suffix)
    keep_suffix = min(len(suffix), available - keep_prefix)
    return _fit(prefix, keep_prefix, "end"), _fit(suffix, keep_suffix, "start")


# -- local models ----------------------------------------------------------------------------------
@dataclass
class LocalSystem:
    """A Quicksilver model (diffusion or AR twin) with its tokenizer and decoding setting."""
    name: str
    model: object
    tokenizer: object
    setting: str = "fixed:1"
    block_length: int = 32
    cache: str = "none"
    batch_size: int | None = None  # None: 1 for a diffusion model on CPU (padding costs more than batching
    usage: Usage = field(default_factory=Usage)  # saves there), 8 otherwise

    def __post_init__(self) -> None:
        if self.batch_size is None:
            on_cpu = next(self.model.parameters()).device.type == "cpu"
            self.batch_size = 1 if (on_cpu and not self.causal) else 8

    @property
    def causal(self) -> bool:
        return bool(self.model.config.causal)

    @property
    def kind(self) -> str:
        return "autoregressive" if self.causal else "diffusion"

    def policy(self, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> DecodePolicy:
        if self.causal:
            return DecodePolicy(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return policy_from_setting(self.setting, max_new_tokens, self.block_length, self.cache, temperature, seed)

    def describe(self, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
        return describe_policy(self.policy(max_new_tokens, temperature), self.causal)

    def _context(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def _decode_batches(self, prompt_ids: list[list[int]], policy: DecodePolicy, on_batch=None,
                        stops: tuple[str, ...] = ()) -> list[Completion]:
        import time

        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        out: list[Completion | None] = [None] * len(prompt_ids)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            t0 = time.perf_counter()
            if policy.seed is not None:
                policy.seed += 1
            watcher = StopWatcher(self.tokenizer, stops, self.model.config.mask_token_id,
                                  self.model.config.eos_token_id) if stops else None
            try:
                result = generate(self.model, [prompt_ids[i] for i in rows], policy, on_step=watcher)
                per_row = (result.row_forwards / len(rows)) if getattr(result, "row_forwards", 0) else result.nfe
                ids, counts = result.ids, [len(row) for row in result.ids]
            except StopDecoding as stop:
                ids, per_row, counts = stop.ids, stop.nfe, stop.committed
            done = [Completion(self.tokenizer.decode(row), n, per_row) for row, n in zip(ids, counts)]
            for i, c in zip(rows, done):
                out[i] = c
            self.usage.add(done, time.perf_counter() - t0)
            if on_batch is not None:
                on_batch(len(rows))
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def complete(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, seed: int | None = None,
                 stops: tuple[str, ...] = (), on_batch=None) -> list[Completion]:
        policy = self.policy(max_new_tokens, temperature, seed)
        budget = self._context() - max_new_tokens
        ids = [_fit(self.tokenizer.encode(p), budget, "end") for p in prompts]
        done = self._decode_batches(ids, policy, on_batch, stops)
        for c in done:
            c.text = cut_at_stops(c.text, stops)
        return done

    @torch.no_grad()
    def infill(self, pairs: list[tuple[str, str]], max_new_tokens: int, on_batch=None) -> list[Completion]:
        """Fill between each (prefix, suffix): natively for diffusion (masks between the two), through
        the PSM fill-in-the-middle format for the AR twin and block-diffusion models."""
        from .infill import diffusion_infill

        cfg = self.model.config
        available = self._context() - max_new_tokens - 3
        encoded = [fit_context(self.tokenizer.encode(p), self.tokenizer.encode(s), available) for p, s in pairs]
        if self.causal or getattr(cfg, "block_size", 0):  # block models cannot see a suffix: PSM, as trained
            prompts = [[cfg.fim_prefix_id, *p, cfg.fim_suffix_id, *s, cfg.fim_middle_id] for p, s in encoded]
            return self._decode_batches(prompts, self.policy(max_new_tokens), on_batch)
        import time

        policy = self.policy(max_new_tokens)
        out: list[Completion] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            t0 = time.perf_counter()
            fills, forwards = diffusion_infill(self.model, [p for p, _ in chunk], [s for _, s in chunk],
                                              max_new_tokens, policy)
            done = [Completion(self.tokenizer.decode(ids), len(ids), f) for ids, f in zip(fills, forwards)]
            out.extend(done)
            self.usage.add(done, time.perf_counter() - t0)
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def info(self) -> dict:
        cfg = self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        return {"name": self.name, "kind": self.kind, "parameters": params, "layers": cfg.num_hidden_layers,
                "hidden_size": cfg.hidden_size, "setting": None if self.causal else self.setting,
                "block_length": None if self.causal else self.block_length,
                "cache": None if self.causal else self.cache}


def load_system(name: str, setting: str = "fixed:1", block_length: int = 32, cache: str = "none",
                batch_size: int | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LocalSystem:
    from ..loading.checkpoint import load_model

    model, tokenizer = load_model(name, device=device, dtype=dtype)
    system = LocalSystem(name, model, tokenizer, setting, block_length, cache, batch_size)
    if not system.causal:
        system.policy(32)  # validate the setting now, before any work
    return system


def system_from_options(model: str | None, endpoint: str | None, setting: str = "fixed:1", block_length: int = 32,
                        cache: str = "none", batch_size: int | None = None, device: str = "cpu", endpoint_model: str | None = None,
                        extra: str | None = None):
    """A local model by name/folder, or an OpenAI-compatible endpoint when ``endpoint`` is given."""
    if endpoint:
        from .endpoint import EndpointSystem

        import os

        body = json.loads(extra) if extra else {}
        key = os.environ.get("QUICKSILVER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return EndpointSystem(endpoint, model=endpoint_model or model, api_key=key, extra=body)
    return load_system(model or "coder-tiny", setting, block_length, cache, batch_size, device)


__all__ = ["LocalSystem", "StopWatcher", "StopDecoding", "policy_from_setting",
           "describe_policy", "fit_context", "load_system", "system_from_options"]

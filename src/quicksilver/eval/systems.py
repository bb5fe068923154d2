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

from ..api import LM
from ..sampling import Canvas, DecodePolicy
from ..sampling.canvas import FIM_FRAME_TOKENS
from ..sampling.policy import DEFAULT_PRESET, policy_from_setting, resolve_policy
from ..sampling.stops import final_prefix, settled_at
from .completion import Completion, Usage, cut_at_stops


# -- decoding settings -------------------------------------------------------------------------------
# What `quicksilver eval` decodes with unless told otherwise: the default preset of every entry point.
DEFAULT_SETTING = DEFAULT_PRESET


def describe_policy(policy: DecodePolicy, causal: bool) -> str:
    if causal:
        return "autoregressive, greedy" if policy.temperature == 0 else f"autoregressive, T={policy.temperature:g}"
    if policy.commit == "fixed":
        per = policy.max_new_tokens / (policy.steps or policy.max_new_tokens)
        text = f"fixed {per:g} token(s)/step, block {policy.block_length}, cache {policy.cache}"
    else:
        text = policy.describe()
    return text + ("" if policy.temperature == 0 else f", T={policy.temperature:g}")


class StopDecoding(Exception):
    """Raised from ``on_step`` to end a generation whose every row is already final up to a stop
    sequence (or end of text): ``ids`` holds each row's final ids, ``nfe`` the forward passes so far."""

    def __init__(self, ids: list[list[int]], nfe: int, committed: list[int]) -> None:
        super().__init__("stop sequence reached")
        self.ids, self.nfe, self.committed = ids, nfe, committed  # committed: positions decoded per row


class StopWatcher:
    """An ``on_step`` callback that stops decoding once every row's committed prefix is settled: it
    holds a stop id, or a stop sequence that decides the cut (``stops.settled_at``).

    Committed tokens never change and blocks are decoded left to right, so the text before the first
    mask of a row is final.  Results are exactly those of a full decode cut at the stop sequences; only
    the forward passes after the point where the answer was settled are saved (and not counted).
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], mask_id: int, stop_ids) -> None:
        self.tokenizer, self.stops, self.mask_id = tokenizer, tuple(stops), mask_id  # anything with decode()
        self.stop_ids = frozenset([stop_ids] if isinstance(stop_ids, int) else stop_ids)
        self.checked: dict[int, int] = {}

    def _settled(self, row: int, ids: list[int]) -> bool:
        prefix, ended = final_prefix(ids, self.mask_id, self.stop_ids)
        if ended:
            return True
        if self.checked.get(row) == len(prefix):
            return False
        self.checked[row] = len(prefix)
        return settled_at(self.tokenizer.decode(prefix), self.stops) is not None

    def __call__(self, event) -> None:
        canvas = event.canvas.tolist()
        if all(self._settled(r, ids) for r, ids in enumerate(canvas)):
            rows, committed = [], []
            for ids in canvas:
                rows.append(final_prefix(ids, self.mask_id, self.stop_ids)[0])
                upto = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
                committed.append(sum(1 for t in ids[:upto] if t != self.mask_id))
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
    setting: str = DEFAULT_SETTING
    block_length: int = 32
    cache: str | None = None  # None: the setting's own
    batch_size: int | None = None  # None: 1 for a diffusion model on CPU (padding costs more than batching
    usage: Usage = field(default_factory=Usage)  # saves there), 8 otherwise
    drafter: object | None = None  # draft head of a causal model (setting verified:K)
    # What decodes: the same ``Backend`` the engine and the server use (``api.LM`` over model and tokenizer).
    backend: LM | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = LM(self.model, self.tokenizer, self.name, drafter=self.drafter)
        if self.batch_size is None:
            on_cpu = next(self.model.parameters()).device.type == "cpu"
            self.batch_size = 1 if (on_cpu and not self.causal) else 8

    @property
    def causal(self) -> bool:
        return not self.backend.is_diffusion

    @property
    def kind(self) -> str:
        return "autoregressive" if self.causal else "diffusion"

    def policy(self, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> DecodePolicy:
        if self.causal and self.setting.startswith("verified"):  # verified:K[:SOURCE], K drafted per round
            _, _, rest = self.setting.partition(":")
            k, _, source = rest.partition(":")
            if not k.isdigit() or int(k) < 1:
                raise GenerationError("verified:K needs K >= 1 tokens drafted per round")
            policy = DecodePolicy(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                  decoding="verified", draft_length=int(k), draft_source=source or "head")
            policy.validate()
            return policy
        if self.causal:
            return resolve_policy(diffusion=False, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return policy_from_setting(self.setting, max_new_tokens, self.block_length, self.cache, temperature, seed)

    def describe(self, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
        policy = self.policy(max_new_tokens, temperature)
        if policy.decoding == "verified":
            return f"verified, draft {policy.draft_length}, " + describe_policy(policy, True)
        return describe_policy(policy, self.causal)

    def _context(self) -> int:
        return self.backend.context_length

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
            backend = self.backend
            watcher = StopWatcher(backend, stops, backend.mask_id, backend.stop_ids) if stops else None
            try:
                result = backend.generate_ids([prompt_ids[i] for i in rows], policy, on_step=watcher)
                per_row = (result.row_forwards / len(rows)) if result.row_forwards else result.nfe
                texts, counts = result.texts, [len(row) for row in result.ids]
            except StopDecoding as stop:
                texts, per_row, counts = [backend.decode(row) for row in stop.ids], stop.nfe, stop.committed
            done = [Completion(text, n, per_row) for text, n in zip(texts, counts)]
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
        ids = [_fit(self.backend.encode(p), budget, "end") for p in prompts]
        done = self._decode_batches(ids, policy, on_batch, stops)
        for c in done:
            c.text = cut_at_stops(c.text, stops)
        return done

    @torch.no_grad()
    def infill(self, pairs: list[tuple[str, str]], max_new_tokens: int, on_batch=None) -> list[Completion]:
        """Fill between each (prefix, suffix): natively for diffusion (masks between the two), through
        the PSM fill-in-the-middle format for the AR twin and block-diffusion models (which cannot see a
        suffix after their block and were trained on that format)."""
        backend = self.backend
        available = self._context() - max_new_tokens - FIM_FRAME_TOKENS
        encoded = [fit_context(backend.encode(p), backend.encode(s), available) for p, s in pairs]
        if self.causal or self.model.config.block_size:
            prompts = [backend.fim_prompt(p, s) for p, s in encoded]
            return self._decode_batches(prompts, self.policy(max_new_tokens), on_batch)
        import time

        policy = self.policy(max_new_tokens)
        out: list[Completion] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            t0 = time.perf_counter()
            result = backend.fill_ids([Canvas.infill(p, max_new_tokens, s) for p, s in chunk], policy)
            done = [Completion(text, len(ids), f) for text, ids, f in zip(result.texts, result.ids, result.forwards)]
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
                "cache": None if self.causal else self.policy(32).cache,
                **({"decoding": self.setting} if self.causal and self.setting.startswith("verified") else {})}


def load_system(name: str, setting: str = DEFAULT_SETTING, block_length: int = 32, cache: str | None = None,
                batch_size: int | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LocalSystem:
    from ..loading.checkpoint import load_model

    from ..api import _drafter_for
    from ..loading.checkpoint import resolve_model_path

    model, tokenizer = load_model(name, device=device, dtype=dtype)
    system = LocalSystem(name, model, tokenizer, setting, block_length, cache, batch_size,
                         drafter=_drafter_for(resolve_model_path(name), model))
    if not system.causal or setting.startswith("verified"):
        system.policy(32)  # validate the setting now, before any work
    if system.causal and setting.startswith("verified") and system.drafter is None and not setting.endswith(":lookup"):
        raise GenerationError(f"{name} ships no draft head (drafter/): the setting verified:K needs one")
    return system


def system_from_options(model: str | None, endpoint: str | None, setting: str = DEFAULT_SETTING,
                        block_length: int = 32, cache: str | None = None, batch_size: int | None = None, device: str = "cpu", endpoint_model: str | None = None,
                        extra: str | None = None):
    """A local model by name/folder, or an OpenAI-compatible endpoint when ``endpoint`` is given."""
    if endpoint:
        from .endpoint import EndpointSystem

        import os

        body = json.loads(extra) if extra else {}
        key = os.environ.get("QUICKSILVER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return EndpointSystem(endpoint, model=endpoint_model or model, api_key=key, extra=body)
    return load_system(model or "coder-tiny", setting, block_length, cache, batch_size, device)


__all__ = ["DEFAULT_SETTING", "LocalSystem", "StopWatcher", "StopDecoding", "policy_from_setting",
           "describe_policy", "fit_context", "load_system", "system_from_options"]

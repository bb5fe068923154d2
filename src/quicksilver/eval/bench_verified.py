"""The benchmark's verified-decoding systems (``sampling.verified``): the AR twin with its draft head.

``bench`` runs them interleaved with the twin (the same prompts, the same load); this module holds
what is theirs: the runner, the draft head lookup, per-round acceptance and timing, the float32
identity check against the twin's greedy output, and the acceptance of draft head checkpoints against
their training tokens (the curve that says what more training would buy).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..loading.checkpoint import load_model
from ..sampling import DecodePolicy, generate
from .bench_measure import CallStats, measure
from .bench_report import VERIFIED_SYSTEMS, draft_source_of


def verified_runner(model, drafter, max_new_tokens: int, draft_length: int, source: str = "head") -> Callable:
    policy = DecodePolicy(max_new_tokens=max_new_tokens, decoding="verified", draft_length=draft_length,
                          draft_source=source)

    def run(prompts: list[list[int]]) -> CallStats:
        r = generate(model, prompts, policy, drafter=drafter)
        return CallStats(r.ids, r.nfe, r.row_forwards, r.first_token_seconds or r.seconds, r.verified)
    return run


def load_drafter_for(model, ar_name: str, drafter: str | None):
    """The draft head for the verified systems: ``drafter`` (a folder) or the one the AR model ships."""
    from ..drafter import find_drafter, load_drafter
    from ..loading.checkpoint import resolve_model_path
    folder = Path(drafter) if drafter else find_drafter(resolve_model_path(ar_name))
    if folder is None:
        raise RuntimeError(f"{ar_name} ships no draft head (drafter/); pass --drafter FOLDER for the verified systems")
    return load_drafter(folder, model)


def verified_fields(calls: list) -> dict:
    """Acceptance and per-round timing over the calls of one repeat (empty for other systems)."""
    stats = [c.verified for c in calls if c.verified is not None]
    if not stats:
        return {}
    accepted = [a for s in stats for a in s.accepted]
    hist = [0] * (stats[0].draft_length + 1)
    for a in accepted:
        hist[a] += 1
    rounds = sum(s.rounds for s in stats)
    return {"accepted_mean": sum(accepted) / max(1, len(accepted)), "accepted_histogram": hist,
            "draft_ms_per_round": 1000 * sum(s.draft_seconds for s in stats) / max(1, rounds),
            "verify_ms_per_round": 1000 * sum(s.verify_seconds for s in stats) / max(1, rounds)}


def identical_in_fp32(cfg, names: list[str], prompt_ids, timed_dtype: str, rows: list, log) -> dict[str, float]:
    """Per verified system, the share of outputs identical to the twin's greedy output, both in float32
    at batch 1 (when the timed dtype is float32 these are the timed runs themselves)."""
    if timed_dtype == "fp32":
        return {r.system: r.identical_share for r in rows if r.system in names and r.batch == cfg.batch_sizes[0]}
    model = load_model(cfg.ar_model, device=cfg.device, dtype=torch.float32)[0]
    head = load_drafter_for(model, cfg.ar_model, cfg.drafter)
    plain = DecodePolicy(max_new_tokens=cfg.max_new_tokens)
    reference = [generate(model, [p], plain).ids[0] for p in prompt_ids]
    out = {}
    for name in names:
        run = verified_runner(model, head, cfg.max_new_tokens, VERIFIED_SYSTEMS[name], draft_source_of(name))
        ids = [run([p]).ids[0] for p in prompt_ids]
        out[name] = sum(a == b for a, b in zip(ids, reference)) / len(ids)
        log(f"{name}: identical to the twin's greedy output in fp32: {out[name]:.0%}")
    return out


def drafter_sweep(cfg, prompt_ids, log) -> list[dict]:
    """Acceptance of draft head checkpoints at batch 1 (float32, greedy, draft length 8): drafts
    accepted per round against the head's training tokens (its config.json says how many)."""
    from ..config import read_json_object
    from ..drafter import load_drafter
    model = load_model(cfg.ar_model, device=cfg.device, dtype=torch.float32)[0]
    out = []
    for path in cfg.drafter_checkpoints:
        head = load_drafter(path, model)
        k = min(8, head.spec.block_size - 1)
        seconds, calls = measure(verified_runner(model, head, cfg.max_new_tokens, k), prompt_ids, 1, 1, 0)
        fields = verified_fields(calls)
        meta = read_json_object(Path(path) / "config.json")
        tokens = sum(len(r) for c in calls for r in c.ids)
        out.append({"checkpoint": str(path), "step": meta.get("step"), "training_tokens": meta.get("tokens"),
                    "draft_length": k, "accepted_mean": fields["accepted_mean"],
                    "accepted_histogram": fields["accepted_histogram"], "tokens_per_second": tokens / sum(seconds)})
        log(f"drafter {path} (step {meta.get('step')}, {meta.get('tokens')} tokens): "
            f"{fields['accepted_mean']:.2f} of {k} drafts accepted per round")
    return out

"""From names and options to a ``DecodePolicy``: the one place a decoding setting is derived.

Every entry point resolves its decoding here: the CLI's options (``quicksilver generate``), the
server's request fields (generated from ``DecodePolicy``, see ``server/schemas.py``), the Python API
(``LM.generate``), the evaluation's ``--setting`` and the benchmark's systems.  ``resolve_policy``
layers, lowest first:

1. ``defaults`` (the caller's own, e.g. the benchmark's ``max_new_tokens`` and ``block_length``);
2. a *base*: a named setting or preset (``name``), else a given ``base`` policy (a backend's default),
   else ``DEFAULT_PRESET``;
3. ``overrides``: any ``DecodePolicy`` field by name (None = not given).

then applies the rules that tie fields together, each written only here:

* **steps means the fixed rule**: ``steps`` given without ``commit`` over a base whose rule ignores a
  step count (``threshold``, ``factor``) selects the fixed rule;
* ``tokens_per_step=K`` (from a name such as ``fixed4``) is ``steps = ceil(max_new_tokens / K)``;
* ``block_length=WHOLE`` (a preset that decodes in one block) is ``max_new_tokens``;
* an autoregressive model (``diffusion=False``) takes only the fields that mean something to it;

and validates once (``DecodePolicy.validate``: a ``GenerationError`` of one sentence).

Names (one scheme, documented in docs/serving.md, "Decoding settings")
  A *preset* is a family's reference sampler or Quicksilver's default: ``fast`` (the default,
  ``DEFAULT_PRESET``: DualCache, incremental refresh, the threshold rule at 0.3, early stop),
  ``quicksilver`` (the threshold rule at 0.9 with early stop, the default before ``fast``),
  ``reference`` (LLaDA's sampler: one token per step, no cache),
  ``llada``, ``llada-pure``, ``dream-entropy``, ``dream-margin``, ``dream-maskgit-plus``.
  A *setting* composes cache and rule: ``[<cache>[-inc][-w<W>][-b<B>]+]<rule><number>`` with cache
  ``none`` | ``prefix`` | ``dual``, ``-inc`` the incremental refresh, ``-w`` a window, ``-b`` a block
  length, and rule ``fixed<K>`` (K tokens per step), ``thr<T>`` (threshold), ``margin<T>`` (threshold
  on the margin score), ``factor<F>``, ``entropy<B>``; a bare cache (``prefix``, ``dual``) means
  ``fixed1``.  Settings decode with ``early_stop`` (same outputs, fewer passes).  The evaluation's
  older spelling ``fixed:K`` / ``threshold:T`` / ``factor:F`` / ``entropy:B`` reads as ``fixed<K>`` /
  ``thr<T>`` / ``factor<F>`` / ``entropy<B>``.
"""
from __future__ import annotations

import dataclasses
import re

from .types import DecodePolicy, GenerationError

WHOLE = -1  # block_length of a preset that decodes the canvas in one block, whatever its length

# -- presets -----------------------------------------------------------------------------------------
# * ``fast`` (``DEFAULT_PRESET``): what every entry point (Python, CLI, server, eval) decodes Quicksilver's
#   diffusion models with when the caller names nothing: blocks of 32, DualCache with incremental
#   refresh, the threshold rule at 0.3 (every position the model gives >= 30% is committed, at least one
#   per pass) and early stop.  It is the fastest setting of docs/benchmarks.md that keeps the reference
#   sampler's output: all 16 HumanEval completions keep the reference's body after the stop-sequence
#   cut, at batch 1 and 8, at 0.68x the AR twin's speed and 5.4x the reference's; the next faster one
#   measured (threshold 0.1) keeps 88%.  (It is the setting ``dual-inc+thr0.3`` without the fixed
#   block length a setting name would add.)
# * ``quicksilver``: the threshold rule at 0.9 with early stop and no cache (Fast-dLLM's threshold; the
#   default before ``fast``: 0.47x the twin where ``fast`` is 0.68x, at the same quality).
# * ``reference``: LLaDA's reference sampler: one token per step, no cache, stop after the block.
# * ``llada``: LLaDA's ``generate.py``: low-confidence remasking, i.e. commit the highest-probability
#   positions (probability of the proposed token under the untempered softmax), the linear schedule of
#   ``steps`` (128 for 128 tokens), greedy, in semi-autoregressive blocks of 32.
# * ``llada-pure``: the same in one block of the whole length (LLaDA-Instruct's paper setting).
# * ``dream-entropy`` / ``dream-margin`` / ``dream-maskgit-plus``: Dream's ``diffusion_generate`` with
#   ``alg`` = entropy / topk_margin / maskgit_plus: one block, one step per token, positions ranked by
#   negative entropy / top-1 minus top-2 probability / probability of the sampled token, all computed on
#   the tempered and nucleus-filtered distribution (``score_tempered``), at Dream's demo sampling
#   (temperature 0.2, top-p 0.95), with Dream's step schedule (floor(masked * (1 - s/t)) positions per
#   step on its time grid, ``schedule="dream"``).  Differences from Dream's code: the count is per row,
#   not the batch average, and Dream's ``origin`` (random-order) and ``alg_temp`` (sampled positions)
#   variants are not offered.
PRESETS: dict[str, dict] = {
    "fast": dict(block_length=32, commit="threshold", threshold=0.3, cache="dual", refresh="incremental",
                 early_stop=True),
    "quicksilver": dict(block_length=32, commit="threshold", threshold=0.9, early_stop=True),
    "reference": dict(),
    "llada": dict(max_new_tokens=128, steps=128, block_length=32, commit="fixed", score="probability",
                  temperature=0.0),
    "llada-pure": dict(max_new_tokens=128, steps=None, block_length=WHOLE, commit="fixed", score="probability",
                       temperature=0.0),
    "dream-entropy": dict(steps=None, block_length=WHOLE, commit="fixed", schedule="dream", score="entropy",
                          temperature=0.2, top_p=0.95, score_tempered=True),
    "dream-margin": dict(steps=None, block_length=WHOLE, commit="fixed", schedule="dream", score="margin",
                         temperature=0.2, top_p=0.95, score_tempered=True),
    "dream-maskgit-plus": dict(steps=None, block_length=WHOLE, commit="fixed", schedule="dream",
                               score="probability", temperature=0.2, top_p=0.95, score_tempered=True),
}

# The decoding every entry point starts from when a request names none (a diffusion model of
# Quicksilver's own family; LLaDA and Dream start from their family's preset, an AR twin from greedy).
DEFAULT_PRESET = "fast"

# The preset a family's backend uses when a request names none.
FAMILY_DEFAULTS = {"llada": "llada", "dream": "dream-entropy"}

# What an autoregressive model reads of a policy; the rest are the diffusion decoder's.
AR_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_at_eos",
             "decoding", "draft_length", "draft_source")  # the last three: verified decoding (sampling/verified.py)
FIELDS = tuple(f.name for f in dataclasses.fields(DecodePolicy))

# One line of help per field: the server's request schema and the CLI's options show these.
FIELD_HELP: dict[str, str] = {
    "max_new_tokens": "Most tokens to generate (the span's budget).",
    "block_length": "Diffusion: positions decoded together; blocks run left to right.",
    "steps": "Diffusion: forward passes in all for the fixed rule (default: one per token); given alone it "
             "selects the fixed rule.",
    "temperature": "0 is greedy.",
    "top_k": "Sample among the k most likely tokens (0: off).",
    "top_p": "Nucleus sampling threshold (1: off).",
    "seed": "Random seed for sampling at temperature > 0.",
    "stop_at_eos": "End a row (or span) at end of text.",
    "commit": "Diffusion commit rule: fixed (the reference schedule), threshold, ordered (left to right while "
              "above the threshold), factor or entropy.",
    "score": "How positions are ranked: probability, margin or entropy.",
    "schedule": "How the fixed rule shares a block out over its steps: linear (LLaDA) or dream.",
    "score_tempered": "Rank positions on the tempered distribution (Dream).",
    "threshold": "Threshold and ordered rules: commit positions scored above this (0 to 1).",
    "factor": "Factor rule: Fast-dLLM's factor.",
    "entropy_bound": "Entropy rule: summed entropy (nats) committed per step.",
    "cache": "Diffusion KV cache: none, prefix or dual.",
    "refresh": "How a cached block starts: full or incremental.",
    "window": "Masked positions after the block the model sees (default: all).",
    "early_stop": "Stop as soon as end of text is final (no pass on trailing padding).",
    "correct": "Diffusion: correction while refining: none, remask, edit or both (docs/control.md).",
    "remask_share": "Remasking: most of a block's committed tokens one step may reopen (0 to 1).",
    "edit_threshold": "Token editing: replace a committed token when the model's best token differs with "
                      "more than this probability.",
    "edit_passes": "Token editing: most extra forward passes per block.",
    "decoding": "AR model: 'verified' (a draft head or copying proposes blocks, the model keeps exactly what it "
                "would write; the default with a draft head) or 'auto' (its plain sampler).",
    "draft_length": "Verified decoding: tokens drafted per round.",
    "draft_source": "Verified decoding: where drafts come from: head, lookup (copied from earlier text) or "
                    "head+lookup.",
}

# -- settings ----------------------------------------------------------------------------------------
_RULES = {"fixed": ("tokens_per_step", {}), "thr": ("threshold", dict(commit="threshold")),
          "margin": ("threshold", dict(commit="threshold", score="margin")),
          "ord": ("threshold", dict(commit="ordered")),
          "factor": ("factor", dict(commit="factor")), "entropy": ("entropy_bound", dict(commit="entropy"))}
_OLD_RULES = {"fixed": "fixed", "threshold": "thr", "factor": "factor", "entropy": "entropy"}
_DEFAULT_NUMBER = {"thr": 0.9, "ord": 0.9, "margin": 0.5, "factor": 1.0, "entropy": 0.5}
_SETTING = re.compile(r"^(?:(none|prefix|dual)(-inc)?(?:-w(\d+))?(?:-b(\d+))?(?:\+(?=.)|$))?"
                      r"(?:(fixed|thr|ord|margin|factor|entropy)([0-9.]*))?$")


def setting_fields(name: str) -> dict:
    """The ``DecodePolicy`` fields of a preset or setting name (``tokens_per_step`` for ``fixed<K>``)."""
    if name in PRESETS:
        return dict(PRESETS[name])
    given = name
    if ":" in name:  # the evaluation's older spelling
        kind, _, value = name.partition(":")
        if kind not in _OLD_RULES:
            raise GenerationError(f"unknown decoding setting '{name}': use fixed:K, threshold:T, factor:F or entropy:B")
        name = _OLD_RULES[kind] + value
    match = _SETTING.match(name)
    if not name or match is None or not (match.group(1) or match.group(5)):
        raise GenerationError(f"unknown preset '{given}': choose a preset ({', '.join(PRESETS)}) or a setting "
                              "such as dual-inc+thr0.7 (docs/serving.md)")
    cache, inc, window, block, rule, number = match.groups()
    fields: dict = dict(early_stop=True)
    if cache:
        fields["cache"] = cache
        if inc:
            fields["refresh"] = "incremental"
        if window:
            fields["window"] = int(window)
        if block:
            fields["block_length"] = int(block)
    rule = rule or "fixed"
    key, extra = _RULES[rule]
    fields.update(extra)
    if rule == "fixed" and not number:
        return fields  # one token per step: steps stays None (one pass per position)
    try:
        value = float(number) if number else _DEFAULT_NUMBER[rule]
    except ValueError:
        raise GenerationError(f"decoding setting '{given}' needs a number after '{rule}'") from None
    if rule == "fixed":
        if value != int(value) or value < 1:
            raise GenerationError("fixed<K> (fixed:K) needs K >= 1 tokens per step")
        value = int(value)
    fields[key] = value
    return fields


def resolve_policy(name: str | None = None, *, base: DecodePolicy | None = None, defaults: dict | None = None,
                   diffusion: bool = True, **overrides) -> DecodePolicy:
    """The ``DecodePolicy`` of ``defaults`` < ``name`` (or ``base``, else ``DEFAULT_PRESET``) < ``overrides``
    (None values are not given), with the rules of the module docstring, validated."""
    unknown = sorted(set(overrides) - set(FIELDS) - {"tokens_per_step"})
    if unknown:
        raise GenerationError(f"unknown decoding option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    fields = dict(defaults or {})
    if name is not None:
        fields.update(setting_fields(name))
    elif base is not None:
        fields.update(dataclasses.asdict(base))
    else:
        fields.update(PRESETS[DEFAULT_PRESET])
    base_commit = fields.get("commit", DecodePolicy.commit)
    if "steps" in given and "commit" not in given and base_commit in ("threshold", "ordered", "factor"):
        given["commit"] = "fixed"  # these rules ignore a step count: asking for one means the fixed rule
    fields.update(given)
    if not diffusion:
        fields = {k: v for k, v in fields.items() if k in AR_FIELDS}
    max_new = fields.get("max_new_tokens", DecodePolicy.max_new_tokens)
    per_step = fields.pop("tokens_per_step", None)
    if per_step:
        fields["steps"] = max(1, -(-max_new // int(per_step)))
    if fields.get("block_length") == WHOLE:
        fields["block_length"] = max_new
    policy = DecodePolicy(**fields)
    policy.validate()
    return policy


def preset_policy(name: str, **overrides) -> DecodePolicy:
    """The ``DecodePolicy`` of preset ``name`` with ``overrides`` (None values are ignored) applied."""
    if name not in PRESETS:
        raise GenerationError(f"unknown preset '{name}': choose from {', '.join(PRESETS)}")
    return resolve_policy(name, **overrides)


def policy_from_setting(setting: str, max_new_tokens: int, block_length: int = 32, cache: str | None = None,
                        temperature: float = 0.0, seed: int | None = None) -> DecodePolicy:
    """The evaluation's settings: a setting name over its ``--block-length`` (at most the budget);
    ``--cache`` given overrides the setting's cache (None keeps the setting's own, "none" by default)."""
    return resolve_policy(setting, defaults=dict(block_length=min(block_length, max_new_tokens), cache="none"),
                          max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, cache=cache)


__all__ = ["PRESETS", "DEFAULT_PRESET", "FAMILY_DEFAULTS", "WHOLE", "AR_FIELDS", "FIELDS", "FIELD_HELP", "setting_fields",
           "resolve_policy", "preset_policy", "policy_from_setting"]

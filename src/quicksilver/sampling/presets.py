"""Named decoding presets: Quicksilver's default decoding, the reference sampler, and the reference
samplers of the open model families, as ``DecodePolicy`` values.

Pure data.  A preset fixes the ordering and schedule of a family's own sampler; any field a caller
passes overrides it (``preset_policy("dream-entropy", max_new_tokens=64, cache="dual")``), so every
fast-decoding option of Quicksilver applies on top.

* ``fast`` (``DEFAULT_PRESET``): what every entry point (Python, CLI, server, eval) decodes
  Quicksilver's diffusion models with when the caller names nothing: blocks of 32, DualCache with
  incremental refresh, the threshold rule at 0.3 (every position the model gives >= 30% is committed,
  at least one per pass) and early stop.  It is the fastest setting of ``docs/benchmarks.md`` that
  keeps the reference's output: 100% of the 16 HumanEval completions have the reference sampler's
  body after the stop-sequence cut, at batch 1 and 8, at 0.68x the AR twin's speed and 5.4x the
  reference's; the next faster one measured (threshold 0.1) keeps 88%.
* ``reference``: the reference sampler (one token per forward pass, by the linear schedule, the whole
  canvas every pass, no cache): slowest, and what every faster setting is compared with.
* ``llada``: LLaDA's ``generate.py``: low-confidence remasking, i.e. commit the highest-probability
  positions (probability of the proposed token under the untempered softmax), the linear schedule of
  ``steps`` (128 for 128 tokens), greedy, in semi-autoregressive blocks of 32.
* ``llada-pure``: the same in one block of the whole length (LLaDA-Instruct's paper setting).
* ``dream-entropy`` / ``dream-margin`` / ``dream-maskgit-plus``: Dream's ``diffusion_generate`` with
  ``alg`` = entropy / topk_margin / maskgit_plus: one block, one step per token, positions ranked by
  negative entropy / top-1 minus top-2 probability / probability of the sampled token, all computed on
  the tempered and nucleus-filtered distribution (``score_tempered``), at Dream's demo sampling
  (temperature 0.2, top-p 0.95), with Dream's step schedule (floor(masked * (1 - s/t)) positions per
  step on its time grid, ``schedule="dream"``).  Differences from Dream's code: the count is per row,
  not the batch average, and Dream's ``origin`` (random-order) and ``alg_temp`` (sampled positions)
  variants are not offered.
"""
from __future__ import annotations

import dataclasses

from .types import DecodePolicy, GenerationError

WHOLE = -1  # block_length of a preset that decodes the canvas in one block, whatever its length

PRESETS: dict[str, dict] = {
    "fast": dict(block_length=32, commit="threshold", threshold=0.3, cache="dual", refresh="incremental",
                 early_stop=True),
    "reference": dict(block_length=32, steps=None, commit="fixed", score="probability", cache="none",
                      refresh="full", early_stop=False),
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

# The decoding of Quicksilver's own diffusion models when the caller names none (see the docstring).
DEFAULT_PRESET = "fast"
# The preset a family's backend uses when a request names none.
FAMILY_DEFAULTS = {"llada": "llada", "dream": "dream-entropy"}


def preset_policy(name: str, **overrides) -> DecodePolicy:
    """The ``DecodePolicy`` of preset ``name`` with ``overrides`` (None values are ignored) applied."""
    if name not in PRESETS:
        raise GenerationError(f"unknown preset '{name}': choose from {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(DecodePolicy)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise GenerationError(f"unknown decoding option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    fields = dict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields.get("block_length") == WHOLE:
        fields["block_length"] = fields.get("max_new_tokens", DecodePolicy.max_new_tokens)
    return DecodePolicy(**fields)


def override_policy(base: DecodePolicy, **given) -> DecodePolicy:
    """``base`` with the fields a caller gave (None values are ignored).  Asking for a step count
    without naming a commit rule means the fixed schedule when the base rule ignores steps
    (threshold, factor), as on the command line and the server."""
    known = {f.name for f in dataclasses.fields(DecodePolicy)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise GenerationError(f"unknown decoding option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("steps") is not None and "commit" not in given and base.commit in ("threshold", "factor"):
        given["commit"] = "fixed"
    return dataclasses.replace(base, **given)


__all__ = ["PRESETS", "DEFAULT_PRESET", "FAMILY_DEFAULTS", "preset_policy", "override_policy"]

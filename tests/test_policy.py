"""The one policy resolver: presets, setting names, request fields and CLI options all resolve through
``sampling.policy.resolve_policy``, and every ``DecodePolicy`` field is settable by HTTP and on the CLI."""
from __future__ import annotations

import dataclasses
import typing

import pytest
from typer.testing import CliRunner

from quicksilver.sampling import DecodePolicy, GenerationError, TextResult, resolve_policy
from quicksilver.sampling.policy import DEFAULT_PRESET, PRESETS, policy_from_setting, setting_fields
from quicksilver.sampling.types import COMMIT_RULES

# A value other than the default for every field (and valid together).
CHANGED = dict(max_new_tokens=24, block_length=8, steps=6, temperature=0.7, top_k=5, top_p=0.9, seed=3,
               stop_at_eos=False, commit="factor", score="margin", schedule="dream", score_tempered=True,
               threshold=0.6, factor=2.5, entropy_bound=0.25, cache="dual", refresh="incremental", window=12,
               early_stop=True, correct="both", remask_share=0.5, edit_threshold=0.8, edit_passes=3)


def test_changed_covers_every_field_with_a_new_value():
    defaults = DecodePolicy()
    assert set(CHANGED) == {f.name for f in dataclasses.fields(DecodePolicy)}
    assert all(getattr(defaults, k) != v for k, v in CHANGED.items())
    assert typing.get_args(typing.get_type_hints(DecodePolicy)["commit"]) == COMMIT_RULES


def test_every_field_is_settable_through_the_server():
    from quicksilver.server.app import ServerSettings, _job
    from quicksilver.server.schemas import CompletionRequest

    class Backend:
        is_diffusion, context_length = True, 256
        default_policy = resolve_policy()

    body = CompletionRequest(prompt="x", max_tokens=CHANGED["max_new_tokens"],
                             **{k: v for k, v in CHANGED.items() if k != "max_new_tokens"})
    policy = _job(body, [5, 6], None, Backend(), ServerSettings()).policy
    assert dataclasses.asdict(policy) == CHANGED


def test_the_server_takes_the_fields_the_old_schema_refused_and_presets():
    from quicksilver.server.app import ServerSettings, _job
    from quicksilver.server.schemas import CompletionRequest

    class Backend:
        is_diffusion, context_length = True, 256
        default_policy = resolve_policy()

    job = _job(CompletionRequest(prompt="x", commit="factor", factor=3.0), [5], None, Backend(), ServerSettings())
    assert job.policy.commit == "factor" and job.policy.factor == 3.0
    dream = _job(CompletionRequest(prompt="x", preset="dream-entropy", max_tokens=8), [5], None, Backend(),
                 ServerSettings()).policy
    assert dream.temperature == 0.2 and dream.block_length == 8  # the preset's sampling, its whole-canvas block
    plain = _job(CompletionRequest(prompt="x"), [5], None, Backend(), ServerSettings()).policy
    assert plain.temperature == 0.0 and plain.commit == "threshold"  # OpenAI's greedy default over the server's
    # "steps means the fixed rule" over the threshold default
    assert _job(CompletionRequest(prompt="x", steps=4), [5], None, Backend(), ServerSettings()).policy.commit == "fixed"


def test_every_field_is_settable_on_the_cli(monkeypatch):
    import quicksilver.api
    from quicksilver.cli import app

    seen = []

    class Backend:
        name, is_diffusion = "fake", True
        default_policy = resolve_policy()

        def encode(self, text):
            return [5, 6]

        def generate_ids(self, ids, policy, on_step=None):
            seen.append(policy)
            return TextResult(ids=[[7]], nfe=1, generated_tokens=1, seconds=0.01, finished=[True], texts=["x"])

    monkeypatch.setattr(quicksilver.api, "load_backend", lambda *a, **k: Backend())
    args = ["generate", "def f():", "--no-live"]
    for name, value in CHANGED.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(option if value else "--no-" + name.replace("_", "-"))
        else:
            args += [option, str(value)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert dataclasses.asdict(seen[0]) == CHANGED


# -- names -------------------------------------------------------------------------------------------------
def test_setting_names_compose_cache_and_rule():
    assert setting_fields("reference") == {}
    assert setting_fields("dual-inc-w32-b16+thr0.7") == dict(early_stop=True, cache="dual", refresh="incremental",
                                                              window=32, block_length=16, commit="threshold",
                                                              threshold=0.7)
    assert setting_fields("prefix") == dict(early_stop=True, cache="prefix")
    assert setting_fields("dual+margin0.5") == dict(early_stop=True, cache="dual", commit="threshold",
                                                    score="margin", threshold=0.5)
    assert resolve_policy("dual-inc+fixed4", defaults=dict(max_new_tokens=256)).steps == 64
    # the evaluation's older spelling reads as the same setting
    assert policy_from_setting("threshold:0.8", 64) == resolve_policy("thr0.8", max_new_tokens=64, block_length=32)
    for bad in ("turbo", "fixed:0", "threshold:x", "dual+", "", "gpu+thr0.5", "dual+thr0.5x"):
        with pytest.raises(GenerationError):
            resolve_policy(bad)


def test_resolution_order_and_rules():
    assert resolve_policy() == resolve_policy(DEFAULT_PRESET)
    assert resolve_policy().commit == "threshold"
    base = DecodePolicy(commit="entropy", steps=8)  # a rule that reads a step count keeps it
    assert resolve_policy(base=base, steps=4).commit == "entropy"
    assert resolve_policy(base=DecodePolicy(commit="factor"), steps=4).commit == "fixed"
    assert resolve_policy(base=DecodePolicy(commit="factor"), steps=4, commit="factor").commit == "factor"
    assert resolve_policy("llada-pure", max_new_tokens=48).block_length == 48
    ar = resolve_policy("llada", diffusion=False, cache="dual", temperature=0.5)
    assert ar.cache == "none" and ar.block_length == DecodePolicy.block_length and ar.temperature == 0.5
    with pytest.raises(GenerationError, match="unknown decoding option: bogus"):
        resolve_policy(bogus=1)
    with pytest.raises(GenerationError, match="threshold"):
        resolve_policy(threshold=1.5)
    with pytest.raises(GenerationError, match="finite"):
        resolve_policy(factor=float("nan"))
    assert set(PRESETS) >= {"quicksilver", "reference", "llada", "dream-entropy"}

"""The Python API: one default decoding (the `fast` preset) with the reference one preset away, text
infill, token-id prompts, and plain-word messages for wrong prompts."""
from __future__ import annotations

import pytest

import quicksilver
from quicksilver.sampling import GenerationError, preset_policy
from quicksilver.sampling.policy import DEFAULT_PRESET

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def lm():
    return quicksilver.load("coder-tiny", device="cpu", threads=1)


def test_the_default_is_the_fast_preset_and_the_reference_is_one_preset_away(lm):
    assert DEFAULT_PRESET == "fast"
    fast = preset_policy("fast", max_new_tokens=32)
    assert (fast.commit, fast.threshold, fast.cache, fast.refresh, fast.early_stop) == \
        ("threshold", 0.3, "dual", "incremental", True)
    assert lm.default_policy == preset_policy(DEFAULT_PRESET)
    default = lm.generate(PROMPT, max_new_tokens=32)
    direct = lm.generate_ids([lm.encode(PROMPT)], fast)
    assert (default.text, default.nfe) == (direct.text, direct.nfe)
    reference = lm.generate(PROMPT, max_new_tokens=32, preset="reference")
    assert reference.nfe == 32  # one token per forward pass, the whole canvas every pass
    ref_policy = preset_policy("reference", max_new_tokens=32)
    assert (ref_policy.commit, ref_policy.cache, ref_policy.steps) == ("fixed", "none", None)


def test_arguments_override_the_default_and_steps_alone_mean_the_fixed_schedule(lm):
    result = lm.generate(PROMPT, max_new_tokens=16, steps=4)
    assert result.nfe <= 4 and result.generated_tokens <= 16
    policy = lm.policy(max_new_tokens=16, steps=4)
    assert policy.commit == "fixed" and policy.cache == "dual"  # the rest of the default stays
    assert lm.policy(threshold=0.9).commit == "threshold"
    with pytest.raises(GenerationError, match="unknown decoding option"):
        lm.generate(PROMPT, not_an_option=1)


def test_token_id_prompts_decode_like_their_text(lm):
    ids = lm.encode(PROMPT)
    assert lm.generate(ids, max_new_tokens=12).text == lm.generate(PROMPT, max_new_tokens=12).text
    both = lm.generate([ids, PROMPT], max_new_tokens=12)
    assert both.texts[0] == both.texts[1]


@pytest.mark.parametrize("prompt, words", [
    (42, "not a number"),
    ({"text": "x"}, "not an object"),
    (None, "not None"),
    ([1.5, 2], "whole numbers"),
    ([-1], "outside this model's vocabulary"),
    ("   ", "the prompt is empty"),
])
def test_wrong_prompts_are_named_in_plain_words(lm, prompt, words):
    with pytest.raises(GenerationError, match=words):
        lm.generate(prompt, max_new_tokens=4)


@pytest.mark.parametrize("name", ["coder-tiny", "coder-tiny-ar"])
def test_text_infill_from_python(name, lm, ar_lm):
    model = lm if name == "coder-tiny" else ar_lm
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    result = model.generate(prefix, suffix=suffix, max_new_tokens=8)
    again = model.infill(prefix, suffix, max_new_tokens=8)
    direct = model.infill_ids(model.encode(prefix), model.encode(suffix), model.policy(max_new_tokens=8))
    assert result.text == again.text == direct.text
    assert 0 < result.generated_tokens <= 8 or result.text == ""
    with pytest.raises(GenerationError, match="strings"):
        model.infill(prefix, 7)

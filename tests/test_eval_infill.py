"""Infilling: task construction, the end of the span, native diffusion infilling, and the harness."""
from __future__ import annotations

import pytest
import torch

from quicksilver.eval.humaneval import load_problems
from quicksilver.eval.completion import Completion
from quicksilver.eval.infill import boundary, build_tasks, reference_fill, run_infill, select, trim_fill
from quicksilver.eval.sandbox import SandboxLimits
from quicksilver.eval.systems import LocalSystem, policy_from_setting
from quicksilver.model import Transformer
from quicksilver.sampling import Canvas, fill
from tests.conftest import tiny_config

PROBLEM = {"prompt": "def f(x):\n    \"\"\"Twice x plus one.\"\"\"\n",
           "canonical_solution": "    y = x * 2\n\n    y = y + 1\n    return y\n",
           "test": "def check(f):\n    assert f(1) == 3\n    assert f(0) == 1\n", "entry_point": "f"}


def test_single_line_tasks_mask_each_non_blank_line():
    tasks = build_tasks({"P/0": PROBLEM}, "single-line")
    assert [t.middle for t in tasks] == ["    y = x * 2\n", "    y = y + 1\n", "    return y\n"]
    for t in tasks:
        assert t.prefix + t.middle + t.suffix == PROBLEM["prompt"] + PROBLEM["canonical_solution"]


@pytest.mark.parametrize("mode", ["multi-line", "random-span"])
def test_other_modes_rebuild_the_program(mode):
    tasks = build_tasks({"P/0": PROBLEM}, mode, spans_per_problem=5, seed=1)
    assert tasks
    for t in tasks:
        assert t.prefix + t.middle + t.suffix == PROBLEM["prompt"] + PROBLEM["canonical_solution"]
    if mode == "multi-line":  # spans of >= 2 lines whose ends are not blank
        assert {t.middle for t in tasks} == {"    y = x * 2\n\n    y = y + 1\n",
                                             "    y = x * 2\n\n    y = y + 1\n    return y\n",
                                             "    y = y + 1\n    return y\n"}
    assert build_tasks({"P/0": PROBLEM}, mode, spans_per_problem=5, seed=1) == tasks  # deterministic


def test_humaneval_single_line_has_the_1033_lines_of_humaneval_infilling():
    tasks = build_tasks(load_problems(), "single-line")
    assert len(tasks) == 1033
    assert len(select(tasks, 10)) == 10 and select(tasks, None) == tasks


def test_line_holes_are_cut_on_token_boundaries():
    for mode in ("single-line", "multi-line"):
        for t in build_tasks({"P/0": PROBLEM}, mode):
            prefix, suffix = boundary(t)
            assert not prefix.endswith("\n") and suffix.startswith("\n")
            fill = reference_fill(t)
            assert fill.startswith("\n") and not fill.endswith("\n") and fill.strip() == t.middle.strip()
            assert prefix + fill + suffix == t.prefix + t.middle + t.suffix
            if mode == "single-line":
                assert trim_fill(fill + "\n    extra = 1\n", suffix, mode).strip() == fill.strip()
    span = build_tasks({"P/0": PROBLEM}, "random-span", 3)[0]
    assert boundary(span) == (span.prefix, span.suffix) and reference_fill(span) == span.middle


@pytest.mark.parametrize("fill, suffix, mode, expected", [
    ("\n    y = 2\n    z = 3\n", "\n    return y\n", "single-line", "\n    y = 2"),
    ("\n\n    y = 2", "\n    return y\n", "single-line", "\n    y = 2"),
    ("    y = 2", "\n    return y\n", "single-line", "\n    y = 2"),
    ("\n    a = 1\n    b = 2\n    return y\n    junk\n", "\n    return y\n", "multi-line", "\n    a = 1\n    b = 2"),
    ("    a = 1\n", "\n    return y\n", "multi-line", "\n    a = 1"),
    ("x * 2 + offset)\n", "offset)\n    return y\n", "random-span", "x * 2 + "),  # repeats the suffix
    ("x * 2 + offset)\n    return y\n", "    return y\n", "random-span", "x * 2 + offset)\n"),
    ("(a, bb, ccc)[0]\n", "ccc)[0]\n", "random-span", "(a, bb, "),
])
def test_trim_fill(fill, suffix, mode, expected):
    assert trim_fill(fill, suffix, mode) == expected


def diffusion_infill(model, prefixes, suffixes, budget, policy):
    """Fills and per-row forward passes of infill canvases (the block decoder)."""
    result = fill(model, [Canvas.infill(p, budget, s) for p, s in zip(prefixes, suffixes)], policy)
    return result.ids, result.forwards


def _tiny(tokenizer) -> Transformer:
    model = Transformer(tiny_config(tokenizer))
    model.reset_parameters(seed=0)
    return model.eval()


@pytest.mark.parametrize("setting, forwards_per_block", [("fixed:1", 8), ("fixed:4", 2), ("fixed:8", 1)])
def test_native_infill_forward_counts(tiny_tokenizer, setting, forwards_per_block):
    model = _tiny(tiny_tokenizer)
    prefix, suffix = tiny_tokenizer.encode("def f(x):\n"), tiny_tokenizer.encode("\n    return y\n")
    policy = policy_from_setting(setting, 16, block_length=8)
    fills, forwards = diffusion_infill(model, [prefix], [suffix], 16, policy)
    assert forwards == [2 * forwards_per_block]  # two blocks of 8
    assert len(fills[0]) <= 16 and tiny_tokenizer.mask_id not in fills[0]


def test_native_infill_batch_equals_one_at_a_time(tiny_tokenizer):
    model = _tiny(tiny_tokenizer)
    pairs = [("def f(x):\n", "\n    return y\n"), ("import os\n\n\ndef long_function_name(a, b, c):\n", "\n")]
    enc = [(tiny_tokenizer.encode(p), tiny_tokenizer.encode(s)) for p, s in pairs]
    for setting in ("fixed:2", "threshold:0.5"):
        policy = policy_from_setting(setting, 12, block_length=12)
        together, _ = diffusion_infill(model, [p for p, _ in enc], [s for _, s in enc], 12, policy)
        alone = [diffusion_infill(model, [p], [s], 12, policy)[0][0] for p, s in enc]
        assert together == alone


def test_native_infill_sees_the_suffix(tiny_tokenizer):
    """The fill must depend on the suffix (it is on the canvas), or this would be plain completion."""
    model = _tiny(tiny_tokenizer)
    policy = policy_from_setting("fixed:1", 8, block_length=8)
    prefix = tiny_tokenizer.encode("def f(x):\n")
    a, _ = diffusion_infill(model, [prefix], [tiny_tokenizer.encode("    return x\n")], 8, policy)
    b, _ = diffusion_infill(model, [prefix], [tiny_tokenizer.encode("class Parser(object):\n    pass\n")], 8, policy)
    assert a != b


class Oracle:
    """A system that fills with the reference (or with junk), to test the harness itself."""
    name, kind = "oracle", "test"

    def __init__(self, answers: dict, junk: bool = False):
        self.answers, self.junk = answers, junk

    def infill(self, pairs, max_new_tokens, on_batch=None):
        return [Completion("    return None\n" if self.junk else self.answers[p]) for p in pairs]


def test_harness_passes_reference_fills_and_fails_wrong_ones():
    problems = load_problems(3)
    tasks = build_tasks(problems, "single-line")
    answers = {boundary(t): reference_fill(t) for t in tasks}
    limits = SandboxLimits(timeout_s=5.0)
    good = run_infill(Oracle(answers), "single-line", problems=problems, sandbox=limits)
    assert good["tasks"] == len(tasks) and good["pass_rate"] == 1.0 and good["exact_match"] == 1.0
    bad = run_infill(Oracle(answers, junk=True), "single-line", problems=problems, sandbox=limits)
    assert bad["passed"] < bad["tasks"]


def test_local_systems_infill_end_to_end(tiny_tokenizer):
    problems = load_problems(2)
    for causal in (False, True):
        model = Transformer(tiny_config(tiny_tokenizer, causal=causal, max_position_embeddings=1024))
        model.reset_parameters(seed=0)
        system = LocalSystem("tiny", model.eval(), tiny_tokenizer, setting="fixed:4", batch_size=4)
        result = run_infill(system, "single-line", limit=3, budget=8, problems=problems,
                            sandbox=SandboxLimits(timeout_s=5.0))
        assert result["tasks"] == 3 and len(result["per_task"]) == 3
        usage = system.usage.to_dict()
        assert usage["tokens_per_forward"] is not None
        if not causal:
            assert usage["tokens_per_forward"] <= 4.0 + 1e-9

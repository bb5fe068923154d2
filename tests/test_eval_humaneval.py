"""HumanEval harness: problems, stop sequences, programs, and pass@k from sandboxed runs."""
from __future__ import annotations

import pytest

from quicksilver.eval.completion import Completion, cut_at_stops
from quicksilver.eval.humaneval import HUMANEVAL_STOPS, build_program, load_problems, model_prompt, run_humaneval
from quicksilver.eval.sandbox import SandboxLimits
from quicksilver.eval.systems import LocalSystem, policy_from_setting
from quicksilver.model import Transformer
from quicksilver.sampling import GenerationError
from tests.conftest import tiny_config


def test_the_package_ships_all_164_problems():
    problems = load_problems()
    assert len(problems) == 164
    assert set(problems["HumanEval/0"]) >= {"prompt", "canonical_solution", "test", "entry_point"}
    assert list(load_problems(4)) == ["HumanEval/0", "HumanEval/41", "HumanEval/82", "HumanEval/123"]


def test_stop_sequences():
    text = "    return a + b\n\n\ndef helper():\n    pass\n"
    assert cut_at_stops(text, HUMANEVAL_STOPS) == "    return a + b\n\n"
    assert cut_at_stops("    x = 1\n# note\nif True:\n", HUMANEVAL_STOPS) == "    x = 1"
    assert cut_at_stops("    return 1", HUMANEVAL_STOPS) == "    return 1"


class Scripted:
    """Returns the canonical solution for the first ``good`` samples of each problem, junk after."""
    name, kind = "scripted", "test"

    def __init__(self, problems, good: int):
        self.solutions = {model_prompt(p["prompt"]): "\n" + p["canonical_solution"] for p in problems.values()}
        self.good, self.seen = good, {}

    def complete(self, prompts, max_new_tokens, temperature=0.0, seed=None, stops=(), on_batch=None):
        out = []
        for prompt in prompts:
            i = self.seen.get(prompt, 0)
            self.seen[prompt] = i + 1
            text = self.solutions[prompt] if i < self.good else "    return 'wrong'\n"
            out.append(Completion(cut_at_stops(text + "\n\ndef extra():\n    raise SystemExit(1)\n", stops)))
        return out


def test_canonical_solutions_pass_and_pass_at_k_counts_samples():
    problems = load_problems(3)
    limits = SandboxLimits(timeout_s=5.0)
    result = run_humaneval(Scripted(problems, good=2), n=5, ks=(1, 2, 5), problems=problems, sandbox=limits)
    assert result["problems"] == 3 and result["solved"] == 3
    assert all(p["correct"] == 2 for p in result["per_problem"])
    assert result["pass@1"] == pytest.approx(0.4) and result["pass@2"] == pytest.approx(0.7)
    assert result["pass@5"] == 1.0
    none = run_humaneval(Scripted(problems, good=0), n=1, problems=problems, sandbox=limits)
    assert none["pass@1"] == 0.0 and none["solved"] == 0


def test_build_program_calls_check():
    problem = load_problems()["HumanEval/0"]
    assert model_prompt(problem["prompt"]) + "\n" == problem["prompt"]  # the model writes the last newline
    program = build_program(problem, "\n" + problem["canonical_solution"])
    assert program.startswith(problem["prompt"] + problem["canonical_solution"])
    assert program.rstrip().endswith("check(has_close_elements)")


@pytest.mark.parametrize("setting, commit", [("fixed:1", "fixed"), ("fixed:4", "fixed"), ("threshold:0.8", "threshold"),
                                             ("factor:2", "factor"), ("entropy:0.3", "entropy")])
def test_settings(setting, commit):
    policy = policy_from_setting(setting, 64, block_length=32)
    assert policy.commit == commit
    if setting == "fixed:4":
        assert policy.steps == 16


@pytest.mark.parametrize("bad", ["fixed:0", "turbo", "threshold:x"])
def test_bad_settings(bad):
    with pytest.raises(GenerationError):
        policy_from_setting(bad, 64)


def test_local_systems_end_to_end(tiny_tokenizer):
    problems = load_problems(2)
    for causal in (False, True):
        model = Transformer(tiny_config(tiny_tokenizer, causal=causal, max_position_embeddings=1024))
        model.reset_parameters(seed=0)
        system = LocalSystem("tiny", model.eval(), tiny_tokenizer, setting="fixed:2", batch_size=2)
        result = run_humaneval(system, problems=problems, max_new_tokens=16, sandbox=SandboxLimits(timeout_s=5.0))
        assert result["problems"] == 2 and 0.0 <= result["pass@1"] <= 1.0
        tpf = system.usage.tokens_per_forward
        assert tpf is not None and (tpf <= 1.0 + 1e-9 if causal else tpf <= 2.0 + 1e-9)


@pytest.mark.parametrize("causal", [False, True])
def test_stopping_at_stop_sequences_changes_nothing_but_the_forward_passes(tiny_tokenizer, causal):
    """Decoding ends once every row's committed text holds a stop sequence; the cut text must equal
    that of a full decode cut afterwards.  Common letters as stops make the early end happen."""
    model = Transformer(tiny_config(tiny_tokenizer, causal=causal, max_position_embeddings=1024))
    model.reset_parameters(seed=0)
    prompts = ["def add(a, b):\n", "import os\n", "class Stack:\n    def push(self, item):\n"]
    stops = ("e", "t", "\n")
    early_forwards = full_forwards = 0
    for batch in (1, 3):
        system = LocalSystem("tiny", model.eval(), tiny_tokenizer, setting="fixed:2", batch_size=batch)
        early = system.complete(prompts, 32, stops=stops)
        full = system._decode_batches([tiny_tokenizer.encode(p) for p in prompts], system.policy(32))
        assert [c.text for c in early] == [cut_at_stops(c.text, stops) for c in full]
        early_forwards += sum(c.forwards for c in early)
        full_forwards += sum(c.forwards for c in full)
    assert early_forwards < full_forwards

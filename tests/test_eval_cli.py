"""`quicksilver eval ...` on tiny checkpoints: every command end to end, and one-sentence errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from quicksilver.loading.checkpoint import save_pretrained
from quicksilver.cli import app
from quicksilver.model import Transformer
from tests.conftest import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    out = {}
    for name, causal in (("tiny-diffusion", False), ("tiny-ar", True)):
        folder = tmp_path_factory.mktemp(name)
        model = Transformer(tiny_config(tiny_tokenizer, causal=causal, max_position_embeddings=1024))
        model.reset_parameters(seed=0)
        save_pretrained(model, tiny_tokenizer, folder)
        out[name] = str(folder)
    return out


def invoke(*args):
    result = runner.invoke(app, ["eval", *args])
    return result


@pytest.mark.parametrize("which", ["tiny-diffusion", "tiny-ar"])
def test_every_eval_command(checkpoints, tiny_dataset, tmp_path, which):
    model = checkpoints[which]
    r = invoke("humaneval", "--model", model, "--limit", "2", "--max-new-tokens", "16", "--setting", "fixed:4",
               "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "HumanEval (2 problems, n=1): pass@1" in r.output
    r = invoke("infill", "--model", model, "--limit", "2", "--budget", "8", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    r = invoke("ppl", "--model", model, "--data", str(tiny_dataset), "--windows", "2", "--samples", "2",
               "--seq-len", "32", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output and "bits per byte" in r.output
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(files) == 3
    he = json.loads(next(tmp_path.glob("humaneval-*.json")).read_text())
    assert he["system"]["kind"] == ("autoregressive" if which == "tiny-ar" else "diffusion")
    assert he["usage"]["tokens_per_forward"] is not None
    assert he["command"] == f"quicksilver eval humaneval --model {model} --setting fixed:4 --max-new-tokens 16 " \
                            f"--limit 2 --out {tmp_path}"
    doc = tmp_path / "models.md"
    doc.write_text("# Models\n")
    r = invoke("report", "--results", str(tmp_path), "--doc", str(doc), "--model", model)
    assert r.exit_code == 0, r.output
    assert "<!-- eval:begin -->" in doc.read_text() and doc.read_text().startswith("# Models\n")


def test_curve(checkpoints, tmp_path):
    r = invoke("curve", "--model", checkpoints["tiny-diffusion"], "--ar-model", checkpoints["tiny-ar"],
               "--setting", "fixed:1", "--setting", "fixed:8", "--problems", "2", "--infill-tasks", "2",
               "--max-new-tokens", "8", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    curve = json.loads((tmp_path / "curve.json").read_text())
    points = curve["points"][checkpoints["tiny-diffusion"]]
    assert [p["setting_short"] for p in points] == ["fixed:1", "fixed:8"]
    assert points[0]["humaneval"]["tokens_per_forward"] <= 1.0 + 1e-9
    assert points[1]["humaneval"]["tokens_per_forward"] > 1.0
    assert (tmp_path / "curve.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, fragment", [
    (["humaneval", "--n", "1", "--k", "5"], "pass@5 needs"),
    (["humaneval", "--setting", "warp:9", "--model", "{diffusion}"], "unknown decoding setting"),
    (["humaneval", "--model", "no-such-model"], "unknown model"),
    (["infill", "--mode", "sideways"], "--mode must be one of"),
    (["ppl", "--data", "/nonexistent"], "not a dataset folder"),
    (["report", "--results", "/nonexistent"], "is not a folder"),
    (["humaneval", "--endpoint", "http://127.0.0.1:9", "--limit", "1"], "cannot reach"),
])
def test_user_errors_are_one_sentence(checkpoints, args, fragment):
    r = invoke(*[a.format(diffusion=checkpoints["tiny-diffusion"]) for a in args])
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output

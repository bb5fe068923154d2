"""Every eval end to end on both bundled models (`coder-tiny`, `coder-tiny-ar`), on a few problems."""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quicksilver.loading.checkpoint import BUNDLED_DIR
from quicksilver.cli import app
from quicksilver.data import build_dataset, folder_source
from quicksilver.tokenizer import Tokenizer

MODELS = ("coder-tiny", "coder-tiny-ar")
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """A small held-out set tokenized with the bundled tokenizer (json package of the stdlib)."""
    corpus = tmp_path_factory.mktemp("heldout-src")
    for f in sorted((Path(sysconfig.get_paths()["stdlib"]) / "json").glob("*.py")):
        (corpus / f.name).write_text(f.read_text())
    out = tmp_path_factory.mktemp("heldout")
    build_dataset(folder_source(corpus), out, tokenizer=Tokenizer.from_file(BUNDLED_DIR / MODELS[0]), val_percent=100.0)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_humaneval_infill_and_ppl(model, held_out, tmp_path):
    invoke("humaneval", "--model", model, "--limit", "2", "--max-new-tokens", "48", "--setting", "fixed:2",
           "--out", str(tmp_path))
    he = json.loads(next(tmp_path.glob("humaneval-*.json")).read_text())
    assert he["problems"] == 2 and len(he["per_problem"]) == 2 and 0 <= he["pass@1"] <= 1
    assert all(s["status"] in ("passed", "failed", "timed out") for p in he["per_problem"] for s in p["samples"])
    assert he["system"]["kind"] == ("autoregressive" if model.endswith("-ar") else "diffusion")
    tpf = he["usage"]["tokens_per_forward"]
    assert (tpf == pytest.approx(1.0, abs=0.05)) if model.endswith("-ar") else (1.0 < tpf <= 2.0)

    invoke("infill", "--model", model, "--limit", "3", "--budget", "12", "--out", str(tmp_path))
    fill = json.loads(next(tmp_path.glob("infill-*.json")).read_text())
    assert fill["tasks"] == 3 and fill["mode"] == "single-line"

    invoke("ppl", "--model", model, "--data", str(held_out), "--windows", "4", "--samples", "4", "--seq-len", "64",
           "--out", str(tmp_path))
    ppl = json.loads(next(tmp_path.glob("ppl-*.json")).read_text())
    # A trained model is far better than uniform over 8,192 tokens (13 bits per token).
    assert 0.05 < ppl["bits_per_byte"] < 13 * ppl["tokens_per_byte"] * 0.8
    if not model.endswith("-ar"):
        assert ppl["se_monte_carlo_bits_per_byte"] > 0


def test_curve_and_report_on_both(tmp_path):
    invoke("curve", "--model", MODELS[0], "--ar-model", MODELS[1], "--setting", "fixed:1", "--setting",
           "threshold:0.5", "--problems", "2", "--infill-tasks", "2", "--max-new-tokens", "16", "--out", str(tmp_path))
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert set(curve["points"]) == set(MODELS)
    assert (tmp_path / "curve.png").is_file()
    doc = tmp_path / "models.md"
    doc.write_text("# Models\n\nkept\n")
    runner.invoke(app, ["eval", "humaneval", "--model", MODELS[1], "--limit", "1", "--max-new-tokens", "16",
                        "--out", str(tmp_path)])
    invoke("report", "--results", str(tmp_path), "--doc", str(doc))
    text = doc.read_text()
    assert text.startswith("# Models\n\nkept\n") and "`coder-tiny-ar`" in text and "Speed–quality curve" in text

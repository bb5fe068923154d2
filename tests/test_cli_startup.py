"""`quicksilver --help`, `quicksilver models` and argument errors answer without importing torch (or
any other heavy module): bounded by what is imported, not by a clock, so the test holds on a busy
machine.  (`-X importtime` lists every module the command imported.)"""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "tokenizers", "safetensors", "transformers", "fastapi", "uvicorn", "jinja2")


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "quicksilver.cli", *args],
                            capture_output=True, text=True, timeout=120)
    modules = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return result, modules


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["generate", "--help"], 0),
    (["serve", "--help"], 0),
    (["eval", "humaneval", "--help"], 0),
    (["models"], 0),
    (["generate"], 2),  # missing prompt
    (["generate", "x", "--max-new-tokens", "0"], 2),
    (["generate", "x", "--threads", "0"], 2),
    (["serve", "--port", "0"], 2),
    (["serve", "--max-n", "0"], 2),
    (["no-such-command"], 2),
])
def test_fast_paths_import_nothing_heavy(args, code):
    result, modules = imported_by(*args)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    heavy = sorted(m for m in HEAVY if m in modules)
    assert not heavy, f"`quicksilver {' '.join(args)}` imported {heavy}"
    assert "quicksilver" in modules  # the listing is real: the package itself shows up


def test_models_lists_the_bundled_models_without_torch():
    result, modules = imported_by("models")
    rows = [line.split()[:2] for line in result.stdout.splitlines()]
    assert ["coder-tiny", "diffusion"] in rows and ["coder-tiny-ar", "autoregressive"] in rows
    assert "torch" not in modules


def test_a_command_that_decodes_does_import_torch():
    """The check above can fail: a real decode shows torch in the same listing."""
    _, modules = imported_by("generate", "x", "--max-new-tokens", "1", "--no-live")
    assert "torch" in modules


def test_the_cli_names_the_same_default_setting_as_eval():
    from quicksilver.cli.evaluate import DEFAULT_SETTING as CLI_DEFAULT
    from quicksilver.eval.systems import DEFAULT_SETTING

    assert CLI_DEFAULT == DEFAULT_SETTING


def test_importing_the_package_does_not_import_torch():
    code = "import sys, quicksilver, quicksilver.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr

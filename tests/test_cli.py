"""The real ``quicksilver`` command, run as a subprocess: outputs, exit codes, and one-sentence errors."""
import subprocess
import sys

import pytest

from quicksilver.loading.checkpoint import bundled_models, save_pretrained
from quicksilver.model import Transformer
from tests.conftest import tiny_config


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "quicksilver.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt")
    model = Transformer(tiny_config(tiny_tokenizer, max_position_embeddings=128))
    model.reset_parameters(seed=0)
    save_pretrained(model, tiny_tokenizer, folder)
    return folder


def assert_user_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]


def test_bundled_models_are_installed():
    assert {"coder-tiny", "coder-tiny-ar"} <= set(bundled_models())


def test_generate_with_the_bundled_model_live_and_plain():
    plain = run("generate", "def add(a, b):", "--max-new-tokens", "24", "--no-live")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("def add(a, b):")
    assert "forward passes" in plain.stdout and "coder-tiny (diffusion)" in plain.stdout
    live = run("generate", "def add(a, b):", "--max-new-tokens", "24", "--steps", "12")
    assert live.returncode == 0, live.stderr
    import re
    passes = int(re.search(r"(\d+) forward passes", live.stdout).group(1))
    assert 1 <= passes <= 12  # 24 tokens in 12 steps: two per pass, fewer passes only after end of text


def test_generate_with_the_twin():
    result = run("generate", "import os", "--model", "coder-tiny-ar", "--max-new-tokens", "8", "--no-live")
    assert result.returncode == 0, result.stderr
    assert "coder-tiny-ar (autoregressive)" in result.stdout


def test_generate_with_a_checkpoint_folder(model_dir):
    result = run("generate", "def f(x):", "--model", str(model_dir), "--max-new-tokens", "8", "--no-live",
                 "--temperature", "0.8", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("def f(x):")


@pytest.mark.parametrize("args, fragment", [
    (["generate", ""], "prompt is empty"),
    (["generate", "   "], "prompt is empty"),
    (["generate", "x", "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
    (["generate", "x", "--max-new-tokens", "-5"], "--max-new-tokens must be a positive integer"),
    (["generate", "x", "--model", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_bad_generate_input(args, fragment):
    assert_user_error(run(*args), fragment)


def test_prompt_longer_than_the_context(model_dir):
    assert_user_error(run("generate", "x = 1\n" * 400, "--model", str(model_dir)), "exceeds the model's context")


def test_folder_that_is_not_a_checkpoint(tmp_path):
    assert_user_error(run("generate", "x", "--model", str(tmp_path)), "not a checkpoint folder")


def test_truncated_safetensors(model_dir, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_user_error(run("generate", "x", "--model", str(broken)), "truncated or corrupt")


def test_bad_train_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nobjective = 'diffusion'\nbatchsize = 4\n")
    assert_user_error(run("train", str(cfg)), "unknown key in [train]: batchsize")
    assert_user_error(run("train", str(tmp_path / "missing.toml")), "no config file")
    assert_user_error(run("train", str(cfg), "--set", "oops"), "--set takes section.key=value")


def test_data_build_from_a_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    result = run("data", "build", "--no-stdlib", "--folder", str(src), "--out", str(tmp_path / "ds"),
                 "--vocab-size", "300", "--val-percent", "30")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ds" / "meta.json").is_file() and "train" in result.stdout
    assert_user_error(run("data", "build", "--no-stdlib", "--folder", str(tmp_path / "nope")), "is not a folder")


@pytest.mark.parametrize("option, value, fragment", [
    ("--steps", "0", "steps must be a positive integer"),
    ("--block-length", "0", "block_length must be a positive integer"),
    ("--temperature", "-1", "temperature must be zero or positive"),
    ("--commit", "greedy", "commit must be one of"),
    ("--cache", "full", "cache must be one of"),
])
def test_bad_decoding_options_print_only_the_error(option, value, fragment):
    result = run("generate", "def f(x):", option, value)
    assert_user_error(result, fragment)
    assert result.stdout == ""  # nothing was drawn before the error


def test_export_of_a_missing_run(tmp_path):
    assert_user_error(run("export", str(tmp_path / "nope"), str(tmp_path / "out")), "no run folder")


def test_generate_with_fast_decoding_matches_the_api():
    """The CLI's decoding options reach the sampler: same text and forward passes as the Python API."""
    import re

    import quicksilver

    args = dict(commit="threshold", threshold=0.5, cache="dual", refresh="incremental", early_stop=True)
    result = run("generate", "def add(a, b):", "--max-new-tokens", "32", "--no-live", "--commit", "threshold",
                 "--threshold", "0.5", "--cache", "dual", "--refresh", "incremental", "--early-stop")
    assert result.returncode == 0, result.stderr
    expected = quicksilver.load("coder-tiny", device="cpu").generate("def add(a, b):", max_new_tokens=32, **args)
    assert result.stdout.startswith("def add(a, b):" + expected.text)
    assert int(re.search(r"(\d+) forward passes", result.stdout).group(1)) == expected.nfe


def test_serve_refuses_bad_threads_before_binding():
    assert_user_error(run("serve", "--threads", "0"), "--threads must be a positive integer")


def test_device_cuda_without_cuda_is_one_sentence():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert_user_error(run("generate", "x", "--device", "cuda"), "device 'cuda' is not available")
    assert_user_error(run("generate", "x", "--device", "tpu"), "unknown device 'tpu'")


def test_live_view_writes_clean_lines_to_a_pipe():
    """Not a terminal: the same lines as --no-live (text, then the stats line on a line of its own),
    no redrawn frames, no escape codes."""
    args = ("generate", "def add(a, b):", "--max-new-tokens", "24", "--threads", "1")
    live, plain = run(*args), run(*args, "--no-live")
    assert live.returncode == 0 and plain.returncode == 0, live.stderr + plain.stderr
    assert "\x1b" not in live.stdout and "░" not in live.stdout
    assert live.stdout.splitlines()[:-1] == plain.stdout.splitlines()[:-1]
    assert live.stdout.splitlines()[-1].startswith("coder-tiny (diffusion): ")
    assert live.stdout.startswith("def add(a, b):")


def test_a_bad_thread_count_in_the_environment_is_one_sentence():
    import os

    env = {**os.environ, "QUICKSILVER_THREADS": "many"}
    result = subprocess.run([sys.executable, "-m", "quicksilver.cli", "generate", "x"], capture_output=True,
                            text=True, timeout=120, env=env)
    assert_user_error(result, "QUICKSILVER_THREADS must be a positive integer")


def test_the_server_says_how_many_threads_it_picked(cli_server):
    log = cli_server.log.read_text()
    assert "1 torch thread (OMP_NUM_THREADS)" in log, log[-2000:]

"""Malformed model folders: each is refused with one sentence naming the problem, never a traceback
and never accepted silently (the cases of the hardening issue, one test each)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from quicksilver.config import ConfigError, ModelConfig
from quicksilver.loading.checkpoint import BUNDLED_DIR, CheckpointError, load_model

SOURCE = BUNDLED_DIR / "coder-tiny"


@pytest.fixture
def folder(tmp_path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(SOURCE / name, out / name)
    (out / "model.safetensors").symlink_to(SOURCE / "model.safetensors")
    return out


def _edit(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _refused(folder: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_the_unedited_copy_loads(folder):
    model, tokenizer = load_model(folder)
    assert model.config.vocab_size >= tokenizer.vocab_size


CASES = [
    ("architectures a number", {"architectures": 5}, ["architectures must be a list of strings"]),
    ("hidden_size a float", {"hidden_size": 256.0}, ["hidden_size must be an integer, got 256.0"]),
    ("zero heads", {"num_attention_heads": 0}, ["num_attention_heads must be positive"]),
    ("zero KV heads", {"num_key_value_heads": 0}, ["num_key_value_heads must be positive"]),
    ("mask_token_id beyond the vocabulary", {"mask_token_id": 9000}, ["mask_token_id 9000 is outside the vocabulary"]),
    ("stop_token_ids a string", {"stop_token_ids": "abc"}, ["stop_token_ids must be a list of integer token ids"]),
    ("causal a string", {"causal": "yes"}, ["causal must be true or false", '"yes"']),
    ("negative eos_token_id", {"eos_token_id": -1}, ["eos_token_id -1 is outside the vocabulary"]),
    ("negative rms_norm_eps", {"rms_norm_eps": -1}, ["rms_norm_eps must be a positive finite number"]),
    ("zero rope_theta", {"rope_theta": 0}, ["rope_theta must be a positive finite number"]),
    ("vocabulary smaller than the tokenizer's", {"vocab_size": 4096}, ["vocab_size 4096 is smaller than the tokenizer's 8192"]),
    ("model_type a number", {"model_type": 7}, ["model_type must be a string"]),
    ("heads of a string", {"num_attention_heads": "8"}, ["num_attention_heads must be an integer"]),
]


@pytest.mark.parametrize("name,changes,words", CASES, ids=[c[0] for c in CASES])
def test_malformed_config_is_one_sentence(folder, name, changes, words):
    _edit(folder, **changes)
    _refused(folder, *words)


def test_every_problem_is_named_at_once(folder):
    _edit(folder, rope_theta=0, causal="yes", hidden_size=256.0)
    message = _refused(folder, "rope_theta", "causal", "hidden_size")
    assert message.count(";") >= 2


def test_invalid_utf8_in_config_json(folder):
    (folder / "config.json").write_bytes(b'{"hidden_size": 256, "family": "\xff\xfe"}')
    _refused(folder, "config.json is not UTF-8 text", "offset")


@pytest.mark.parametrize("value", [5, None, ["model.safetensors"], "../outside.safetensors"])
def test_weight_map_values_must_name_files_in_the_folder(folder, value):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"embed_tokens.weight": value}}))
    _refused(folder, "weight_map entry for 'embed_tokens.weight' must name a file in the folder")


def test_the_cli_says_it_in_one_line(folder):
    from typer.testing import CliRunner

    from quicksilver.cli import app

    _edit(folder, causal="yes")
    result = CliRunner().invoke(app, ["generate", "x", "--model", str(folder), "--no-live", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "causal must be true or false" in lines[0] and "Traceback" not in result.output


def test_model_config_refuses_in_code_too():
    with pytest.raises(ConfigError, match="num_key_value_heads must be positive"):
        ModelConfig(num_key_value_heads=0)
    with pytest.raises(ConfigError, match="pad_token_id 64 is outside"):
        ModelConfig(vocab_size=64, pad_token_id=64)
    assert ModelConfig(rope_theta=500000).rope_theta == 500000  # an integer is a number

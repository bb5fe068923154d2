import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quicksilver.config import ConfigError
from quicksilver.training.train import load_run_config, lr_at, train

CONFIG = """
[model]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 128

[train]
objective = "{objective}"
data = "{data}"
out_dir = "{out}"
seq_len = 64
batch_size = 8
max_steps = {steps}
lr = 3e-3
warmup_steps = 2
eval_every = 10
eval_batches = 2
save_every = {save_every}
threads = 1
"""


def write_config(tmp_path, data, name="run", objective="diffusion", steps=20, save_every=10, **extra):
    text = CONFIG.format(objective=objective, data=data, out=tmp_path / name, steps=steps, save_every=save_every)
    for key, value in extra.items():
        text += f"{key} = {value}\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("objective", ["diffusion", "ar"])
def test_twenty_steps_lower_the_loss(tmp_path, tiny_dataset, objective):
    cfg = write_config(tmp_path, tiny_dataset, objective=objective, steps=20)
    state = train(load_run_config(cfg), progress=False, log=lambda *_: None)
    assert state["step"] == 20
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    vals = [h["val_loss"] for h in state["history"]]
    assert vals[-1] < vals[0]
    assert losses[-1] < 6.2  # log(512) = 6.24 is the loss of a uniform guess
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_lr_schedule_warms_up_then_decays():
    cfg = load_run_config.__globals__["TrainConfig"](lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_dataset):
    steps = 12
    straight = write_config(tmp_path, tiny_dataset, name="straight", steps=steps, save_every=4)
    train(load_run_config(straight), progress=False, log=lambda *_: None)

    killed = write_config(tmp_path, tiny_dataset, name="killed", steps=steps, save_every=4)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "quicksilver.cli", "train", str(killed), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = out / "latest"
        if latest.is_file() and latest.read_text().strip() >= "step-0000004":
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((out / "checkpoints" / (out / "latest").read_text().strip() / "trainer_state.json")
                           .read_text())["step"]
    assert killed_at < steps, "the run finished before it could be killed"
    state = train(load_run_config(killed), resume=True, progress=False, log=lambda *_: None)
    assert state["step"] == steps
    a = load_file(str(tmp_path / "straight" / "checkpoints" / f"step-{steps:07d}" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / f"step-{steps:07d}" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    oa = load_file(str(tmp_path / "straight" / "checkpoints" / f"step-{steps:07d}" / "optimizer.safetensors"))
    ob = load_file(str(out / "checkpoints" / f"step-{steps:07d}" / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


def test_bad_config_keys_are_rejected(tmp_path, tiny_dataset):
    cfg = write_config(tmp_path, tiny_dataset, learning_rat="0.1")
    with pytest.raises(ConfigError, match=r"unknown key in \[train\]: learning_rat"):
        load_run_config(cfg)
    bad_section = tmp_path / "bad.toml"
    bad_section.write_text("[modle]\nhidden_size = 3\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_run_config(bad_section)
    with pytest.raises(ConfigError, match="objective"):
        load_run_config(write_config(tmp_path, tiny_dataset, name="o", objective="gan"))

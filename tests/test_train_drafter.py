"""Objective ``drafter`` (training/drafter.py): a draft head trained on a frozen target through
``quicksilver.training.train``; a run stopped and resumed ends with the weights of an uninterrupted one."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from conftest import tiny_config
from quicksilver.loading.checkpoint import save_pretrained
from quicksilver.model import Transformer
from quicksilver.training.train import load_run_config, train


def _config(tmp_path, data, target, out, steps):
    text = f"""
[train]
objective = "drafter"
init_from = "{target}"
data = "{data}"
out_dir = "{out}"
seq_len = 48
batch_size = 2
max_steps = {steps}
lr = 1e-3
warmup_steps = 2
eval_every = 3
save_every = 3
log_every = 1
threads = 1
dtype = "fp32"

[drafter]
num_layers = 1
block_size = 5
target_layers = [0, 1]
blocks_per_window = 4
prompt_len = 16
pool_windows = 6
val_windows = 2
pool_batch = 6
"""
    path = tmp_path / f"{out.name}-{steps}.toml"
    path.write_text(text)
    return load_run_config(path)


def test_drafter_run_trains_logs_and_resumes_exactly(tmp_path, tiny_dataset, tiny_tokenizer):
    target = Transformer(tiny_config(tiny_tokenizer, causal=True, logits_shift=True))
    target.reset_parameters(seed=2)
    folder = save_pretrained(target, tiny_tokenizer, tmp_path / "target")
    whole = train(_config(tmp_path, tiny_dataset, folder, tmp_path / "whole", 6), progress=False, log=lambda *a: None)
    assert whole["step"] == 6 and whole["tokens"] == 6 * 2 * 48 and whole["cpu_s"] > 0
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert any("accept_4" in r for r in log) and all("cpu_s" in r for r in log)
    # stopped after 3 steps, then resumed with the full budget
    train(_config(tmp_path, tiny_dataset, folder, tmp_path / "split", 3), progress=False, log=lambda *a: None)
    train(_config(tmp_path, tiny_dataset, folder, tmp_path / "split", 6), resume=True, progress=False,
          log=lambda *a: None)
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "step-0000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shipped = json.loads((tmp_path / "whole" / "best" / "config.json").read_text())
    assert shipped["model_type"] == "quicksilver-drafter" and not list((tmp_path / "whole").rglob("*.bin"))

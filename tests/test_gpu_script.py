"""The GPU training script's CPU rehearsal, end to end: train both models side by side under a time
budget, pack the best checkpoints as a device machine would return them, unpack, load, generate."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quicksilver.loading.checkpoint import load_model
from quicksilver.sampling import DecodePolicy, generate

ROOT = Path(__file__).resolve().parents[1]


def test_rehearsal_trains_packs_and_unpacks(tmp_path, tiny_dataset):
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(tiny_dataset), OUT=str(tmp_path / "out"),
               WORK=str(tmp_path / "work"), MINUTES="0.15")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_gpu.sh"), "--rehearsal"], env=env,
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    summary = json.loads((out / "summary.json").read_text())
    for name in ("coder-small", "coder-small-ar"):
        info = summary["models"][name]
        vals = [h["val_loss"] for h in info["history"]]
        assert len(vals) >= 2, "validation should run several times within the budget"
        assert info["best"]["best_val"] == min(vals)
        assert info["epochs_seen"] > 0
    assert summary["models"]["coder-small"]["config"]["causal"] is False
    assert summary["models"]["coder-small-ar"]["config"]["causal"] is True

    unpacked = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_run.py"), "unpack", str(out),
                               str(tmp_path / "models"), "--data", str(tiny_dataset)],
                              capture_output=True, text=True, timeout=120)
    assert unpacked.returncode == 0, unpacked.stderr
    for name in ("coder-small", "coder-small-ar"):
        model, tok = load_model(tmp_path / "models" / name)
        assert next(model.parameters()).dtype == torch.bfloat16
        result = generate(model.float(), [tok.encode("def f(x):")], DecodePolicy(max_new_tokens=8, block_length=8))
        assert result.nfe >= 1

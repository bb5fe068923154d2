"""Training never loses a checkpoint: a run owns its out_dir, pruning touches only its own checkpoints,
best/ is swapped in whole, resume falls back to the newest intact checkpoint, a full disk is one error."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quicksilver.config import ConfigError
from quicksilver.training import resume as resume_module
from quicksilver.training.resume import DiskFullError, recover_dir, replace_dir
from quicksilver.training.train import load_run_config, train
from tests.test_train import write_config

QUIET = dict(progress=False, log=lambda *_: None)


def _run(tmp_path, data, name="run", steps=4, save_every=2, **flags):
    cfg = load_run_config(write_config(tmp_path, data, name=name, steps=steps, save_every=save_every))
    return train(cfg, **QUIET, **flags)


def _latest(out: Path) -> Path:
    return out / "checkpoints" / (out / "latest").read_text().strip()


def test_a_new_run_refuses_a_non_empty_out_dir(tmp_path, tiny_dataset):
    _run(tmp_path, tiny_dataset)
    with pytest.raises(ConfigError, match=r"is not empty .*--resume.*--overwrite"):
        _run(tmp_path, tiny_dataset)
    from typer.testing import CliRunner

    from quicksilver.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.toml"), "--no-progress"])
    assert result.exit_code == 2 and "is not empty" in result.output and "Traceback" not in result.output
    with pytest.raises(ConfigError, match="give one"):
        _run(tmp_path, tiny_dataset, resume=True, overwrite=True)


def test_overwrite_starts_over_and_leaves_no_old_checkpoint(tmp_path, tiny_dataset):
    _run(tmp_path, tiny_dataset, steps=8)
    out = tmp_path / "run"
    old_id = json.loads((out / "run.json").read_text())["run_id"]
    (out / "notes.txt").write_text("mine")  # not a run's file: --overwrite keeps it
    state = _run(tmp_path, tiny_dataset, steps=4, overwrite=True)
    assert state["step"] == 4 and state["run_id"] != old_id
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert _latest(out).is_dir() and (out / "notes.txt").read_text() == "mine"
    assert _run(tmp_path, tiny_dataset, steps=6, resume=True)["step"] == 6


def test_pruning_never_deletes_another_runs_checkpoints_or_the_latest(tmp_path, tiny_dataset):
    """The issue's case: a folder holding an older run's higher-numbered checkpoints.  Pruning by step
    number alone deleted the new run's fresh checkpoints and left `latest` pointing at nothing."""
    _run(tmp_path, tiny_dataset, name="old", steps=4)
    _run(tmp_path, tiny_dataset, name="run", steps=4)
    out = tmp_path / "run"
    for step in (100, 200):  # another run's checkpoints, with higher step numbers
        shutil.copytree(tmp_path / "old" / "checkpoints" / "step-0000004", out / "checkpoints" / f"step-{step:07d}")
    state = _run(tmp_path, tiny_dataset, name="run", steps=8, resume=True)
    assert state["step"] == 8 and _latest(out).name == "step-0000008"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000006", "step-0000008", "step-0000100", "step-0000200"], kept


def test_best_is_swapped_in_whole(tmp_path):
    best, tmp = tmp_path / "best", tmp_path / ".best.tmp"
    best.mkdir()
    (best / "model.safetensors").write_text("old weights")
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new weights")
    replace_dir(tmp, best)
    assert (best / "model.safetensors").read_text() == "new weights" and not tmp.exists()


def test_a_crash_while_writing_best_leaves_the_old_best(tmp_path, tiny_dataset, monkeypatch):
    _run(tmp_path, tiny_dataset, steps=10, save_every=10)  # eval_every = 10: best/ of step 10
    out = tmp_path / "run"
    before = (out / "best" / "model.safetensors").read_bytes()
    real = resume_module.save_pretrained

    def dies_midway(model, tokenizer, folder, *args, **kwargs):
        real(model, tokenizer, folder, *args, **kwargs)
        (Path(folder) / "model.safetensors").write_bytes(b"half")  # a torn write
        raise KeyboardInterrupt  # the process is stopped right there

    monkeypatch.setattr(resume_module, "save_pretrained", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tiny_dataset, steps=20, save_every=10, resume=True)
    assert (out / "best" / "model.safetensors").read_bytes() == before  # the old best, whole


def test_without_an_atomic_exchange_a_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    best, tmp = tmp_path / "best", tmp_path / ".best.tmp"
    best.mkdir()
    (best / "w").write_text("old")
    tmp.mkdir()
    (tmp / "w").write_text("new")
    monkeypatch.setattr(resume_module, "_exchange", lambda a, b: False)
    calls = []
    real = os.replace

    def crash_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(resume_module.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(tmp, best)
    monkeypatch.setattr(resume_module.os, "replace", real)
    assert not best.exists()
    recover_dir(best)  # what resume does first
    assert (best / "w").read_text() == "old"


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, tiny_dataset):
    _run(tmp_path, tiny_dataset, steps=6)
    out = tmp_path / "run"
    weights = out / "checkpoints" / "step-0000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    said = []
    cfg = load_run_config(write_config(tmp_path, tiny_dataset, name="run", steps=8, save_every=2))
    state = train(cfg, resume=True, progress=False, log=said.append)
    assert any("step-0000006" in s and "damaged" in s and "resuming from step-0000004" in s for s in said), said
    assert any("resumed from step 4" in s for s in said)
    assert state["step"] == 8 and _latest(out).name == "step-0000008"


def test_resume_with_no_intact_checkpoint_says_so(tmp_path, tiny_dataset):
    _run(tmp_path, tiny_dataset, steps=4)
    out = tmp_path / "run"
    for folder in (out / "checkpoints").iterdir():
        (folder / "optimizer.safetensors").unlink()
    with pytest.raises(ConfigError, match="no intact checkpoint"):
        _run(tmp_path, tiny_dataset, steps=6, resume=True)


def test_disk_full_while_saving_is_one_error_and_the_previous_checkpoint_stays(tmp_path, tiny_dataset, monkeypatch):
    """ENOSPC injected at the optimizer file of the second checkpoint."""
    real = resume_module.atomic_save_tensors
    seen = []

    def full_at_second(tensors, path, *args, **kwargs):
        if path.name == "optimizer.safetensors":
            seen.append(path)
            if len(seen) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(resume_module, "atomic_save_tensors", full_at_second)
    with pytest.raises(DiskFullError) as info:
        _run(tmp_path, tiny_dataset, steps=4)
    message = str(info.value)
    assert "is full" in message and "step 4 was not written" in message and "step-0000002" in message
    out = tmp_path / "run"
    assert _latest(out).name == "step-0000002"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]  # the torn copy is gone
    monkeypatch.setattr(resume_module, "atomic_save_tensors", real)
    assert _run(tmp_path, tiny_dataset, steps=4, resume=True)["step"] == 4


def test_disk_full_on_a_real_small_filesystem(tmp_path, tiny_dataset):
    """The CLI on a 3 MiB tmpfs (one checkpoint is 1.7 MiB) (a private mount namespace: as root, or through a user namespace):
    exit 2, one line, the latest checkpoint intact."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    flags = ["--mount"] if os.geteuid() == 0 else ["--mount", "--map-root-user"]
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    mnt = tmp_path / "small"
    mnt.mkdir()
    cfg = write_config(tmp_path, tiny_dataset, name="run", steps=40, save_every=2)
    inner = tmp_path / "inner.txt"
    script = (f"mount -t tmpfs -o size=3m tmpfs {mnt} && "
              f"{sys.executable} -m quicksilver.cli train {cfg} --no-progress --set train.out_dir={mnt}/run; "
              f"echo rc=$? > {inner}; ls {mnt}/run/checkpoints >> {inner}; cat {mnt}/run/latest >> {inner}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    done = subprocess.run(["unshare", *flags, "sh", "-c", script], capture_output=True, text=True, timeout=600, env=env)
    report = inner.read_text().split()
    assert report[0] == "rc=2", (report, done.stdout[-2000:], done.stderr[-2000:])
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is full" in errors[0] and "Traceback" not in done.stderr, done.stderr
    checkpoints, latest = report[1:-1], report[-1]
    assert latest in checkpoints and not any(c.startswith(".tmp") for c in checkpoints), report

"""Distributed training: the same config on 1 process or 2 (torchrun, gloo, CPU) takes the same steps.

Two real ``torchrun --standalone --nproc_per_node 2`` launches (DDP, FSDP2) are compared with
one-process runs of the same config: per-step losses, validation losses and final weights agree
to float32 tolerance, and checkpoints written at one world size resume at the other.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quicksilver.config import ConfigError
from quicksilver.data.shards import ShardDataset
from quicksilver.training.distributed import DistInfo
from quicksilver.model import Transformer
from quicksilver.training.train import _train, load_run_config, run_model_config, step_loss, train

STEPS, SAVE = 6, 3
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
eval_every = 3
eval_batches = 3
save_every = {save}
log_every = 1
threads = 1
dtype = "fp32"
"""
# Adam divides each update by sqrt(second moment); an element whose gradient is nearly zero turns
# the ~1e-7 rounding difference between one all-reduced sum and one local sum into a slightly
# larger weight difference.  Losses agree to 1e-5; weights to this.
WEIGHT_ATOL = 1e-4


def write_config(tmp_path: Path, data: Path, name: str, objective: str = "diffusion") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(CONFIG.format(objective=objective, data=data, out=tmp_path / name, steps=STEPS, save=SAVE))
    return path


def torchrun(config: Path, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "quicksilver.cli", "train", str(config), "--no-progress", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("done: step") == 1  # only rank 0 reports


def losses(run_dir: Path) -> dict[tuple[str, int], float]:
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key in ("loss", "val_loss"):
            if key in rec:
                out[(key, rec["step"])] = rec[key]
    return out


def assert_same_run(a: Path, b: Path, steps=range(1, STEPS + 1)) -> None:
    la, lb = losses(a), losses(b)
    for step in steps:
        assert lb[("loss", step)] == pytest.approx(la[("loss", step)], abs=1e-5), step
    for key in la:
        if key[0] == "val_loss" and key in lb:
            assert lb[key] == pytest.approx(la[key], abs=1e-5)
    final = f"checkpoints/step-{STEPS:07d}"
    for name in ("model.safetensors", "optimizer.safetensors"):
        wa, wb = load_file(str(a / final / name)), load_file(str(b / final / name))
        assert sorted(wa) == sorted(wb)
        for k in wa:
            torch.testing.assert_close(wb[k].float(), wa[k].float(), atol=WEIGHT_ATOL, rtol=0, msg=k)


def resume_copy(src: Path, dst: Path, step: int) -> None:
    """A run folder holding only ``src``'s checkpoint at ``step`` (as if stopped there)."""
    name = f"step-{step:07d}"
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)
    (dst / "latest").write_text(name + "\n")


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_dataset) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("dist")
    cfg = write_config(tmp, tiny_dataset, "one")
    train(load_run_config(cfg), progress=False, log=lambda *_: None)
    return tmp, tmp / "one"


def test_two_ddp_ranks_match_one_process_and_resume_at_world_size_one(one_process_run, tiny_dataset):
    tmp, one = one_process_run
    cfg = write_config(tmp, tiny_dataset, "ddp")
    torchrun(cfg)
    assert_same_run(one, tmp / "ddp")
    # A checkpoint written by 2 ranks continues in 1 process exactly as the 1-process run did.
    resume_copy(tmp / "ddp", tmp / "ddp-then-one", SAVE)
    run = load_run_config(cfg, {"train.out_dir": str(tmp / "ddp-then-one")})
    state = train(run, resume=True, progress=False, log=lambda *_: None)
    assert state["step"] == STEPS
    assert_same_run(one, tmp / "ddp-then-one", steps=range(SAVE + 1, STEPS + 1))


def test_fsdp2_resumes_a_one_process_checkpoint_on_two_ranks(one_process_run, tiny_dataset):
    tmp, one = one_process_run
    resume_copy(one, tmp / "one-then-fsdp", SAVE)
    cfg = write_config(tmp, tiny_dataset, "one-then-fsdp")
    torchrun(cfg, "--resume", "--set", "train.distributed=fsdp")
    assert_same_run(one, tmp / "one-then-fsdp", steps=range(SAVE + 1, STEPS + 1))
    # The best model folder is a plain, loadable checkpoint too.
    assert (tmp / "one-then-fsdp" / "best" / "model.safetensors").is_file()


def test_ranks_split_the_global_batch_without_overlap(tiny_dataset):
    data = ShardDataset(tiny_dataset, "train")
    whole = data.batch(7, 8, 32, seed=3)
    parts = [data.batch(7, 4, 32, seed=3, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    quarters = [data.batch(7, 2, 32, seed=3, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat(quarters), whole)
    assert not torch.equal(parts[0], parts[1])


@pytest.mark.parametrize("objective", ["diffusion", "ar"])
def test_step_noise_does_not_depend_on_the_split(tmp_path, tiny_dataset, tiny_tokenizer, objective):
    """Mask times, masks and FIM cuts of a rank's rows equal those rows of the one-process draw."""
    run = load_run_config(write_config(tmp_path, tiny_dataset, "noise", objective))
    mcfg = run_model_config(run.train, run.model, tiny_tokenizer)
    model = Transformer(mcfg)
    model.reset_parameters(seed=0)
    tokens = ShardDataset(tiny_dataset, "train").batch(5, 8, 64)
    with torch.no_grad():
        whole = step_loss(model, tokens, run.train, mcfg, 5)
        halves = [step_loss(model, tokens[4 * r:4 * r + 4], run.train, mcfg, 5, r, 2) for r in range(2)]
    assert sum(float(h.nll_sum) for h in halves) == pytest.approx(float(whole.nll_sum), rel=1e-5)
    assert sum(h.tokens for h in halves) == whole.tokens
    assert (halves[0].loss + halves[1].loss).item() / 2 == pytest.approx(whole.loss.item(), rel=1e-5)


def test_global_batch_must_divide_over_the_processes(tmp_path, tiny_dataset):
    run = load_run_config(write_config(tmp_path, tiny_dataset, "odd"))
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        _train(run, DistInfo(rank=0, world_size=3, mode="ddp"), torch.device("cpu"), False, False, print)


def test_unknown_strategy_is_a_config_error(tmp_path, tiny_dataset):
    cfg = write_config(tmp_path, tiny_dataset, "bad")
    with pytest.raises(ConfigError, match="ddp' or 'fsdp"):
        load_run_config(cfg, {"train.distributed": "zero3"})

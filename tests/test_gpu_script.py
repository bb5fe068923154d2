"""The prepared GPU run (scripts/train_gpu.sh) rehearsed end to end on CPU with tiny models and about
10 seconds of training: a compressed slice of the data is inflated, the compile probe decides, both
models train under the budget, the weights are packed as a device machine would return them, the
8B-shaped step timing, the benchmark and the engine run at tiny sizes, and everything lands in
results.json; then the files are unpacked, loaded and generated from."""
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from quicksilver.loading.checkpoint import load_model
from quicksilver.sampling import DecodePolicy, generate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))

from slice_data import inflate, slice_dataset, spread_order  # noqa: E402
from step_times import TINY  # noqa: E402


def test_slice_is_spread_compressed_and_inflates_to_source_tokens(tiny_dataset, tmp_path):
    assert spread_order(5) == [0, 4, 2, 1, 3]
    source = np.fromfile(tiny_dataset / "train_000.bin", dtype=np.uint16)
    info = slice_dataset(tiny_dataset, tmp_path / "slice", max_bytes=120_000, val_tokens=4096, chunk_tokens=2048)
    assert info["bytes"] <= 120_000 and 0 < info["fraction"] < 1
    meta = json.loads((tmp_path / "slice" / "meta.json").read_text())
    assert meta["slice_of"]["compression"] == "xz" and meta["tokens"]["val"] == 4096
    folder = inflate(tmp_path / "slice", tmp_path / "plain")
    train = np.fromfile(folder / "train_000.bin", dtype=np.uint16)
    assert len(train) == meta["tokens"]["train"]
    # Each chunk is a stretch of the source followed by end of text, in corpus order.
    n_chunks = -(-len(source) // 2048)
    assert meta["slice_of"]["chunks"].startswith(f"{info['train_tokens'] // 2049} of {n_chunks} chunks")
    first, second = train[:2048], train[2049:2049 + 2048]
    starts = [i * 2048 for i in range(n_chunks)]
    assert any(np.array_equal(first, source[s:s + 2048]) for s in starts)
    assert any(np.array_equal(second, source[s:s + 2048]) for s in starts)
    assert train[2048] == meta["eos_id"]
    # Everything fits: the whole stream comes back, chunk by chunk with end of text after each.
    whole = slice_dataset(tiny_dataset, tmp_path / "all", max_bytes=50_000_000, val_tokens=4096, chunk_tokens=2048)
    assert whole["train_tokens"] == len(source) + n_chunks and whole["fraction"] == 1.0
    assert inflate(folder, tmp_path / "unused") == folder  # plain shards pass through
    (tmp_path / "slice" / "val_000.bin.xz").write_bytes(lzma.compress(b"\0\0"))
    try:
        inflate(tmp_path / "slice", tmp_path / "bad")
        raise AssertionError("a shard that does not match meta.json must be refused")
    except SystemExit as e:
        assert "does not inflate" in str(e)


def test_rehearsal_end_to_end(tmp_path, tiny_dataset):
    sliced = tmp_path / "slice"
    slice_dataset(tiny_dataset, sliced, max_bytes=2_000_000, val_tokens=1_000_000, chunk_tokens=4096)
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(sliced), OUT=str(out), WORK=str(work),
               BUDGET_S="360", TRAIN_S="20", CAP_PROBE="25", CAP_PACK="40", CAP_STEPS="60", CAP_BENCH="100",
               CAP_ENGINE="60")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_gpu.sh"), "--rehearsal"], env=env,
                          capture_output=True, text=True, timeout=480, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr

    # What comes back: at most 8 files of at most 16 MiB, weights only as shards.
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    assert {"run.log", "results.json", "summary.json"} <= set(files)
    assert all(f.endswith(".safetensors") for f in files if "/" in f)
    assert {f.split("/")[0] for f in files if "/" in f} == {"coder-small", "coder-small-ar"}

    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "rehearsal" and results["wall_s"] <= 360
    phases = {p["phase"]: p for p in results["phases"]}
    assert list(phases) == ["data", "probe", "train-coder-small-ar", "train-coder-small", "pack", "steps",
                            "bench-b1", "bench-b8", "engine"]
    assert all(p["seconds"] <= p["cap_s"] + 6 for p in phases.values())  # caps hold (+ the kill grace)
    for name in ("data", "pack", "steps", "bench-b1", "bench-b8", "engine"):
        assert phases[name]["status"] == "ok", phases[name]
    probe = results["compile_probe"]
    assert probe["eager_step_s"] > 0 and isinstance(probe["compile"], bool) and probe["reason"]

    steps = results["step_times"]
    assert steps["shape"] == "tiny" and steps["datasheet"] is None and steps["skipped"] == []
    d, layers, mlp, vocab = TINY["d_model"], TINY["n_layers"], TINY["mlp_hidden_size"], TINY["vocab_size"]
    assert steps["parameters"] == 2 * vocab * d + layers * (4 * d * d + 3 * d * mlp + 2 * d) + d
    for name, (context, queries) in {"ar_step": (511, 1), "dual_step": (480, 32), "full_canvas": (0, 512)}.items():
        entry = steps["passes"][name]
        assert (entry["context"], entry["queries"]) == (context, queries)
        assert entry["bytes"] == entry["weight_bytes"] + entry["kv_bytes"]
        assert entry["kv_bytes"] == 2 * 2 * layers * d * context  # keys and values, bf16, 4 heads x 16
        for variant in ("eager", "graph"):
            assert entry["variants"][variant]["ms"] > 0
            assert entry["variants"][variant]["ran_as_graph"] is False  # no GPU: the same path, eagerly
        assert entry["variants"]["graph"]["identical_to_eager"] is True

    rows = {(r["system"], r["batch"]): r for r in results["bench"]["rows"]}
    for system in ("ar-twin", "dual", "dual+thr0.9", "dual-inc+thr0.7", "dual-inc+thr0.3", "dual-inc+fixed4"):
        for batch in (1, 8):
            assert rows[system, batch]["tokens_per_second"] > 0
    assert rows["dual", 1]["tokens_per_forward"] <= 1.0 + 1e-9  # one token per step
    assert rows["dual-inc+fixed4", 1]["tokens_per_forward"] > 1.0

    engine = results["engine"]
    assert engine["skipped"] == []
    seen = {(r["system"], r["requests"]) for r in engine["runs"] if r.get("tokens_per_s", 0) > 0}
    assert {batch for _, batch in seen} == {1, 8, 32} and len(seen) == 9

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["slice_of"]["compression"] == "xz"
    for name in ("coder-small", "coder-small-ar"):
        info = summary["models"][name]
        vals = [h["val_loss"] for h in info["history"]]
        assert len(vals) >= 2, "validation should run several times within the budget"
        assert info["best"]["best_val"] == min(vals)
        assert info["epochs_seen"] > 0 and info["weights_packed"]
    assert summary["models"]["coder-small"]["config"]["causal"] is False
    assert summary["models"]["coder-small-ar"]["config"]["causal"] is True

    unpacked = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_run.py"), "unpack", str(out),
                               str(tmp_path / "models"), "--data", str(tiny_dataset)],
                              capture_output=True, text=True, timeout=120)
    assert unpacked.returncode == 0, unpacked.stderr
    for name in ("coder-small", "coder-small-ar"):
        model, tok = load_model(tmp_path / "models" / name)
        assert next(model.parameters()).dtype == torch.bfloat16
        assert model.num_parameters() == summary["models"][name]["parameters"]
        # The unpacked model is the run's best checkpoint, rounded to bf16 for the trip, and decodes as it does.
        best, _ = load_model(work / name / "best", dtype=torch.float32)
        for (key, got), (_, want) in zip(model.state_dict().items(), best.state_dict().items()):
            assert torch.equal(got, want.to(torch.bfloat16)), key
        policy = DecodePolicy(max_new_tokens=8, block_length=8)
        prompt = [tok.encode("def f(x):")]
        assert generate(model.float(), prompt, policy).ids == generate(best.to(torch.bfloat16).float(), prompt, policy).ids

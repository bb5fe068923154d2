"""Pack the two best checkpoints of scripts/train_gpu.sh for the trip back from a GPU machine, and
unpack them here into loadable model folders.

A device machine returns at most 8 files of at most 16 MB, so `pack` writes only weight shards
(bf16, at most 16 MB each) and one summary.json (configs, training summaries, validation
histories, throughput); `unpack` rebuilds each folder with config.json and the tokenizer of the
dataset the run used (the same file the GPU run read).

    python scripts/gpu_run.py pack runs/gpu-work $OUT --data data/stdlib-8k [--models coder-small-ar coder-small]
    python scripts/gpu_run.py unpack /path/to/returned/files DEST --data data/stdlib-8k
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from quicksilver.loading.checkpoint import load_model, save_pretrained  # noqa: E402

NAMES = ("coder-small", "coder-small-ar")
SHARD_BYTES = 16_000_000
MAX_FILES = 8  # files a device machine returns


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()]


def _run_state(run: Path) -> dict:
    """Steps, tokens, time and validation history of a run, from its log (which a run stopped by its
    wall-clock cap before its final checkpoint also has) and, when present, its last checkpoint."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    history = [r for r in records if "val_loss" in r]
    throughput = sorted(r["tok_s"] for r in records if "tok_s" in r)
    last = max(records, key=lambda r: r.get("step", 0)) if records else {"step": 0, "tokens": 0}
    state = {"step": last.get("step", 0), "tokens": last.get("tokens", 0),
             "elapsed_s": history[-1]["elapsed_s"] if history else None, "history": history, "finished": False,
             "median_tokens_per_s": throughput[len(throughput) // 2] if throughput else None}
    latest = run / "latest"
    if latest.is_file():
        saved = json.loads((run / "checkpoints" / latest.read_text().strip() / "trainer_state.json").read_text())
        if saved["step"] >= state["step"]:
            state.update(step=saved["step"], tokens=saved["tokens"], elapsed_s=saved["elapsed_s"],
                         history=saved["history"], finished=True)
    return state


def pack(work: Path, out: Path, data: Path, names: list[str]) -> None:
    """The pair's weights always; a further model's (a variant of scripts/train_gpu.sh's hook) only
    while the files stay within what a device machine returns (its summary is kept either way)."""
    summary = {"tokenizer_sha256": _sha256(data / "tokenizer.json"), "dataset": json.loads((data / "meta.json").read_text()),
               "models": {}}
    reserved = {"summary.json", "results.json", "run.log"}  # written beside the shards, now or later
    for name in names:
        run = work / name
        model, tokenizer = load_model(run / "best")
        dest = out / name
        shutil.rmtree(dest, ignore_errors=True)
        save_pretrained(model, None, dest, dtype=torch.bfloat16, max_shard_bytes=SHARD_BYTES)
        (dest / "config.json").unlink()  # carried in summary.json: fewer files to bring back
        (dest / "model.safetensors.index.json").unlink(missing_ok=True)
        count = len({p.name for p in _files(out) if p.parent == out} | reserved) + \
            len([p for p in _files(out) if p.parent != out])
        weights_packed = True
        if name not in NAMES and count > MAX_FILES:
            shutil.rmtree(dest)
            weights_packed = False
        state = _run_state(run)
        summary["models"][name] = {
            "config": model.config.to_dict(),
            "parameters": model.num_parameters(),
            "best": json.loads((run / "best" / "train_summary.json").read_text()),
            "final_step": state["step"], "final_tokens": state["tokens"], "elapsed_s": state["elapsed_s"],
            "finished": state["finished"],
            "epochs_seen": state["tokens"] / summary["dataset"]["tokens"]["train"],
            "history": state["history"],
            "median_tokens_per_s": state["median_tokens_per_s"],
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "weights_packed": weights_packed,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    files = _files(out)
    too_big = [p for p in files if p.stat().st_size > 16 * 2**20]
    planned = len({p.name for p in files if p.parent == out} | reserved) + len([p for p in files if p.parent != out])
    if planned > MAX_FILES or too_big:
        raise SystemExit(f"pack produced {planned} files with {', '.join(sorted(reserved))} "
                         f"({len(too_big)} over 16 MiB): more than a device machine returns")
    print(f"packed {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB in {out}")


def unpack(returned: Path, dest: Path, data: Path) -> None:
    summary = json.loads((returned / "summary.json").read_text())
    if _sha256(data / "tokenizer.json") != summary["tokenizer_sha256"]:
        raise SystemExit(f"{data}/tokenizer.json is not the tokenizer the GPU run used")
    for name, info in summary["models"].items():
        if not info.get("weights_packed", True):
            print(f"{name}: summary only (its weights did not fit in the returned files)")
            continue
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for shard in sorted((returned / name).glob("*.safetensors")):
            shutil.copy(shard, folder / shard.name)
        (folder / "config.json").write_text(json.dumps(info["config"], indent=2) + "\n")
        shutil.copy(data / "tokenizer.json", folder / "tokenizer.json")
        (folder / "train_summary.json").write_text(json.dumps(
            {k: v for k, v in info.items() if k not in ("config", "history")} | {"history": info["history"]}, indent=2))
        model, _ = load_model(folder)  # fails loudly on a missing or mis-shaped tensor
        print(f"{folder}: {model.num_parameters():,} parameters, best validation loss "
              f"{info['best']['best_val']:.4f} at step {info['best']['best_step']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/stdlib-8k"))
    parser.add_argument("--models", nargs="+", default=list(NAMES), help="pack: run folders under the work folder")
    args = parser.parse_args()
    if args.action == "pack":
        pack(args.source, args.dest, args.data, args.models)
    else:
        unpack(args.source, args.dest, args.data)


if __name__ == "__main__":
    main()

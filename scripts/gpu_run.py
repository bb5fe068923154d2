"""Pack the two best checkpoints of scripts/train_gpu.sh for the trip back from a GPU machine, and
unpack them here into loadable model folders.

A device machine returns at most 8 files of at most 16 MB, so `pack` writes only weight shards
(bf16, at most 16 MB each) and one summary.json (configs, training summaries, validation
histories, throughput); `unpack` rebuilds each folder with config.json and the tokenizer of the
dataset the run used (the same file the GPU run read).

    python scripts/gpu_run.py pack runs/gpu-work $OUT --data data/stdlib-8k
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack(work: Path, out: Path, data: Path) -> None:
    summary = {"tokenizer_sha256": _sha256(data / "tokenizer.json"), "dataset": json.loads((data / "meta.json").read_text()),
               "models": {}}
    for name in NAMES:
        run = work / name
        model, tokenizer = load_model(run / "best")
        dest = out / name
        shutil.rmtree(dest, ignore_errors=True)
        save_pretrained(model, None, dest, dtype=torch.bfloat16, max_shard_bytes=SHARD_BYTES)
        (dest / "config.json").unlink()  # carried in summary.json: fewer files to bring back
        (dest / "model.safetensors.index.json").unlink()
        state = json.loads((run / "checkpoints" / (run / "latest").read_text().strip() / "trainer_state.json").read_text())
        throughput = [json.loads(line)["tok_s"] for line in (run / "log.jsonl").read_text().splitlines()
                      if '"tok_s"' in line]
        summary["models"][name] = {
            "config": model.config.to_dict(),
            "parameters": model.num_parameters(),
            "best": json.loads((run / "best" / "train_summary.json").read_text()),
            "final_step": state["step"], "final_tokens": state["tokens"], "elapsed_s": state["elapsed_s"],
            "epochs_seen": state["tokens"] / summary["dataset"]["tokens"]["train"],
            "history": state["history"],
            "median_tokens_per_s": sorted(throughput)[len(throughput) // 2] if throughput else None,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    files = [p for p in out.rglob("*") if p.is_file()]
    too_big = [p for p in files if p.stat().st_size > 16 * 2**20]
    if len(files) > 8 or too_big:
        raise SystemExit(f"pack produced {len(files)} files ({len(too_big)} over 16 MiB): more than a device machine returns")
    print(f"packed {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB in {out}")


def unpack(returned: Path, dest: Path, data: Path) -> None:
    summary = json.loads((returned / "summary.json").read_text())
    if _sha256(data / "tokenizer.json") != summary["tokenizer_sha256"]:
        raise SystemExit(f"{data}/tokenizer.json is not the tokenizer the GPU run used")
    for name, info in summary["models"].items():
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
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.dest, args.data)


if __name__ == "__main__":
    main()

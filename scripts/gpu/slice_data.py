"""A slice of a dataset folder small enough to travel to a GPU machine, and its inflation there.

A device call carries at most 64 MiB, the repository's tracked files included (about 37 MiB, most of
it the two bundled models), so a corpus such as data/code-8k (362 MB) travels as a slice:

* validation: the first ``--val-tokens`` tokens of the validation split (enough for the trainer's
  fixed validation windows);
* training: chunks of ``--chunk-tokens`` tokens taken evenly across the whole training stream (so
  every source of the corpus is in the slice, not only the first files), each compressed as its
  own xz stream, added until the compressed bytes would pass ``--max-mb``.  Token ids of code
  compress about 3-4x under xz, so ~24 MB carries ~40M tokens.

The slice is a dataset folder with ``train_000.bin.xz`` / ``val_000.bin.xz`` instead of ``.bin``
shards, ``tokenizer.json`` copied unchanged (models trained on the slice load with the full
corpus's tokenizer) and a ``meta.json`` whose token counts are the slice's, with ``slice_of``
saying where it came from.  ``inflate`` turns it back into plain shards (checking their sha256)
before training; a folder of plain shards passes through unchanged.

    python scripts/gpu/slice_data.py slice data/code-8k data/code-8k-slice          # room left in 64 MiB
    python scripts/gpu/slice_data.py inflate data/code-8k-slice /tmp/work/data       # prints the folder to train on
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

CARRY_LIMIT = 64 * 2**20  # bytes a device call carries, working tree included
MARGIN = 2 * 2**20  # untracked files, the scripts' own outputs


def tracked_bytes(repo: Path) -> int | None:
    """Bytes of the git checkout's tracked files (what travels besides the carried paths)."""
    try:
        names = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((repo / n).stat().st_size for n in names.decode().split("\0") if n and (repo / n).is_file())


def _read_split(folder: Path, split: str) -> np.ndarray:
    shards = sorted(folder.glob(f"{split}_*.bin"))
    if not shards:
        raise SystemExit(f"{folder} has no {split}_*.bin shards")
    return np.concatenate([np.fromfile(s, dtype=np.uint16) for s in shards])


def spread_order(n: int) -> list[int]:
    """0..n-1 in van der Corput order: every prefix is spread evenly over the range."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(2**bits)]
    return [k for k in keys if k < n]


def slice_dataset(src: Path, dest: Path, max_bytes: int, val_tokens: int, chunk_tokens: int) -> dict:
    meta = json.loads((src / "meta.json").read_text())
    eos = np.array([meta["eos_id"]], dtype=np.uint16)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.bin*"):
        old.unlink()
    shutil.copy(src / "tokenizer.json", dest / "tokenizer.json")

    val = _read_split(src, "val")[:val_tokens]
    val_xz = lzma.compress(val.tobytes(), preset=6)
    budget = max_bytes - len(val_xz) - (dest / "tokenizer.json").stat().st_size - 16_384  # meta.json
    if budget <= 0:
        raise SystemExit(f"--max-mb {max_bytes / 1e6:.1f} leaves no room for training tokens")

    train = _read_split(src, "train")
    n_chunks = -(-len(train) // chunk_tokens)  # the stream in consecutive chunks, the last one shorter
    taken: dict[int, bytes] = {}
    used = 0
    for index in spread_order(n_chunks):
        lo = index * chunk_tokens
        chunk = np.concatenate([train[lo:lo + chunk_tokens], eos])  # end of text between chunks
        packed = lzma.compress(chunk.tobytes(), preset=6)
        if used + len(packed) > budget:
            break
        taken[index] = packed
        used += len(packed)
    if not taken:
        raise SystemExit(f"one chunk of {chunk_tokens:,} tokens does not fit in --max-mb {max_bytes / 1e6:.1f}")
    # Chunks in corpus order, each its own xz stream: lzma reads concatenated streams as one.
    with open(dest / "train_000.bin.xz", "wb") as f:
        for index in sorted(taken):
            f.write(taken[index])
    (dest / "val_000.bin.xz").write_bytes(val_xz)

    train_raw = lzma.decompress((dest / "train_000.bin.xz").read_bytes())
    sliced = dict(meta)
    sliced["tokens"] = {"train": len(train_raw) // 2, "val": int(len(val))}
    sliced["bytes"] = None  # source bytes of a token slice are not tracked
    sliced["shard_sha256"] = {"train_000.bin": hashlib.sha256(train_raw).hexdigest(),
                              "val_000.bin": hashlib.sha256(val.tobytes()).hexdigest()}
    sliced["slice_of"] = {"folder": str(src), "train_tokens": int(len(train)), "val_tokens": int(meta["tokens"]["val"]),
                          "chunks": f"{len(taken)} of {n_chunks} chunks of {chunk_tokens:,} tokens, spread evenly",
                          "train_fraction": round((len(train_raw) // 2 - len(taken)) / len(train), 4),  # EOS not counted
                          "compression": "xz"}
    (dest / "meta.json").write_text(json.dumps(sliced, indent=2) + "\n")
    size = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
    return {"bytes": size, "train_tokens": sliced["tokens"]["train"], "val_tokens": sliced["tokens"]["val"],
            "fraction": sliced["slice_of"]["train_fraction"]}


def inflate(src: Path, dest: Path) -> Path:
    """The folder to train on: ``src`` itself when it holds plain shards, else ``dest`` with them inflated."""
    packed = sorted(src.glob("*.bin.xz"))
    if not packed:
        return src
    meta = json.loads((src / "meta.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for p in packed:
        raw = lzma.decompress(p.read_bytes())
        name = p.name[:-len(".xz")]
        if hashlib.sha256(raw).hexdigest() != meta["shard_sha256"][name]:
            raise SystemExit(f"{p} does not inflate to the shard its meta.json names")
        (dest / name).write_bytes(raw)
    for name in ("meta.json", "tokenizer.json"):
        shutil.copy(src / name, dest / name)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    s = sub.add_parser("slice", help="write a compressed slice of a dataset folder")
    s.add_argument("source", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--max-mb", type=float, default=None,
                   help="size of the slice in MB (default: what 64 MiB leaves beside this checkout's tracked files)")
    s.add_argument("--val-tokens", type=int, default=1_048_576)
    s.add_argument("--chunk-tokens", type=int, default=1_048_576)
    i = sub.add_parser("inflate", help="plain shards for training (prints the folder)")
    i.add_argument("source", type=Path)
    i.add_argument("dest", type=Path)
    args = parser.parse_args()
    if args.action == "inflate":
        print(inflate(args.source, args.dest))
        return
    repo = Path(__file__).resolve().parents[2]
    tree = tracked_bytes(repo)
    if args.max_mb is None:
        if tree is None:
            raise SystemExit("not in a git checkout: give --max-mb")
        max_bytes = CARRY_LIMIT - tree - MARGIN
        print(f"tracked files of {repo}: {tree / 2**20:.1f} MiB; the slice gets {max_bytes / 1e6:.1f} MB", file=sys.stderr)
    else:
        max_bytes = int(args.max_mb * 1e6)
        if tree is not None and tree + max_bytes > CARRY_LIMIT:
            print(f"warning: {tree / 2**20:.1f} MiB of tracked files + {max_bytes / 2**20:.1f} MiB of slice is over "
                  f"the 64 MiB a device call carries", file=sys.stderr)
    info = slice_dataset(args.source, args.dest, max_bytes, args.val_tokens, args.chunk_tokens)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

"""Tokenize a corpus into uint16 shards and serve packed training batches from them.

Layout of a dataset folder::

    tokenizer.json        the tokenizer every shard was made with
    train_000.bin ...     uint16 token ids, documents joined by end-of-text
    val_000.bin ...
    meta.json             sources, counts, split rule, dedupe, licenses, shard sha256s, timings
    files.jsonl           one line per kept file: source/path, origin, license, split, bytes, tokens
    dropped.jsonl         one line per dropped duplicate and the file it duplicates
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..tokenizer import Tokenizer
from .corpus import Document, split_of
from .dedupe import Deduper, MinHashConfig

SHARD_TOKENS = 50_000_000


class DatasetError(ValueError):
    """A dataset folder is missing or inconsistent."""


def build_dataset(
    documents: Iterable[Document],
    out_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    vocab_size: int = 8192,
    val_percent: float = 2.0,
    progress: Callable[[str, int], None] | None = None,
    near_dedupe: MinHashConfig | None = None,
    extra_meta: dict | None = None,
) -> dict:
    """Read, deduplicate, split, (train a tokenizer if none is given,) tokenize and write shards.

    Exact duplicates are always dropped; near duplicates too when ``near_dedupe`` is given.  Besides
    the shards, ``files.jsonl`` lists every kept file (source, origin, license, split, bytes, tokens)
    and ``dropped.jsonl`` every duplicate with the file it duplicates.  ``progress(stage, n)`` is
    called as documents are read, deduplicated and tokenized (``"total:<stage>"`` announces a stage's size).  ``extra_meta`` is merged into
    ``meta.json`` at the end (a source may fill it while it is read).
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    read: list[Document] = []
    for doc in documents:
        read.append(doc)
        if progress:
            progress("read", 1)
    read_seconds = time.perf_counter() - started
    if not read:
        raise DatasetError("the corpus is empty: no readable text files were found")

    if progress:
        progress("total:dedupe", len(read))
    deduper = Deduper(near_dedupe)
    docs: list[Document] = []
    dropped = {"exact": 0, "near": 0}
    with open(out / "dropped.jsonl", "w") as log:
        for doc in read:
            verdict = deduper.check(f"{doc.source}/{doc.path}", doc.text)
            if verdict is None:
                docs.append(doc)
            else:
                dropped[verdict[0]] += 1
                log.write(json.dumps({"file": f"{doc.source}/{doc.path}", "duplicate": verdict[0],
                                      "of": verdict[1]}) + "\n")
            if progress:
                progress("dedupe", 1)
    del read, deduper
    dedupe_seconds = time.perf_counter() - started - read_seconds

    if tokenizer is None:
        train_texts = [d.text for d in docs if split_of(f"{d.source}/{d.path}", val_percent) == "train"]
        tokenizer = Tokenizer.train(train_texts or [d.text for d in docs], vocab_size=vocab_size)
    if tokenizer.vocab_size > 65535:
        raise DatasetError("uint16 shards need a vocabulary under 65,536 tokens")
    tokenizer.save(out / "tokenizer.json")

    if progress:
        progress("total:tokenize", len(docs))
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    files = {"train": 0, "val": 0}
    chars = {"train": 0, "val": 0}
    per_source: dict[str, dict[str, int]] = {}
    licenses: dict[str, int] = {}
    batch = 256
    with open(out / "files.jsonl", "w") as listing:
        for start in range(0, len(docs), batch):
            chunk = docs[start:start + batch]
            for doc, ids in zip(chunk, tokenizer.encode_batch([d.text for d in chunk])):
                split = split_of(f"{doc.source}/{doc.path}", val_percent)
                splits[split].append(np.asarray(ids + [tokenizer.eos_id], dtype=np.uint16))
                size = len(doc.text.encode("utf-8", "surrogatepass"))
                files[split] += 1
                chars[split] += size
                row = per_source.setdefault(doc.source, {"files": 0, "bytes": 0, "tokens": 0})
                row["files"] += 1
                row["bytes"] += size
                row["tokens"] += len(ids) + 1
                license = doc.license or "unknown"
                licenses[license] = licenses.get(license, 0) + 1
                listing.write(json.dumps({"file": f"{doc.source}/{doc.path}", "origin": doc.origin,
                                          "license": license, "split": split, "bytes": size,
                                          "tokens": len(ids) + 1}) + "\n")
            if progress:
                progress("tokenize", len(chunk))

    counts = {}
    shard_sha256 = {}
    for split, arrays in splits.items():
        for old in out.glob(f"{split}_*.bin"):
            old.unlink()
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint16)
        counts[split] = int(tokens.size)
        for i in range(0, max(tokens.size, 1), SHARD_TOKENS):
            name = f"{split}_{i // SHARD_TOKENS:03d}.bin"
            part = tokens[i:i + SHARD_TOKENS]
            part.tofile(out / name)
            shard_sha256[name] = hashlib.sha256(part.tobytes()).hexdigest()
    meta = {
        "format": "quicksilver-shards-v1",
        "dtype": "uint16",
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "val_percent": val_percent,
        "sources": sorted(per_source),
        "documents": files,
        "bytes": chars,
        "tokens": counts,
        "duplicates_dropped": dropped["exact"] + dropped["near"],
        "exact_duplicates_dropped": dropped["exact"],
        "near_duplicates_dropped": dropped["near"],
        "dedupe": {"exact": "sha256 of text with unified line endings, no trailing spaces or blank edges",
                   "near": asdict(near_dedupe) if near_dedupe else None},
        "per_source": per_source,
        "licenses": dict(sorted(licenses.items())),
        "shard_sha256": shard_sha256,
        "seconds": {"read": round(read_seconds, 1), "dedupe": round(dedupe_seconds, 1),
                    "total": round(time.perf_counter() - started, 1),
                    "cpu": round(time.process_time() - cpu_started, 1)},  # all threads, all stages
    }
    meta.update(extra_meta or {})
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class ShardDataset:
    """Token stream of one split; batches are packed windows at random offsets.

    A batch depends only on (seed, step, rank, world size), so a resumed run sees exactly the
    batches an uninterrupted one would have, and ranks never draw the same window.
    """

    def __init__(self, folder: str | Path, split: str) -> None:
        folder = Path(folder)
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            raise DatasetError(f"{folder} is not a dataset folder (no meta.json); run `quicksilver data build`")
        self.meta = json.loads(meta_file.read_text())
        shards = sorted(folder.glob(f"{split}_*.bin"))
        if not shards:
            raise DatasetError(f"{folder} has no {split} shards")
        arrays = [np.fromfile(s, dtype=np.uint16) for s in shards]
        self.tokens = torch.from_numpy(np.concatenate(arrays).astype(np.int64))
        self.split = split

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0,
              rank: int = 0, world_size: int = 1) -> torch.Tensor:
        if len(self) <= seq_len:
            raise DatasetError(f"the {self.split} split has {len(self)} tokens, fewer than one sequence of {seq_len}")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self) - seq_len, (batch_size * world_size,), generator=gen)
        starts = starts[rank * batch_size:(rank + 1) * batch_size]
        return self.tokens[starts[:, None] + torch.arange(seq_len)]

    def fixed_batches(self, n_batches: int, batch_size: int, seq_len: int) -> list[torch.Tensor]:
        """Evenly spaced, non-overlapping windows: the same validation set for every model."""
        n_windows = min(n_batches * batch_size, (len(self) - 1) // seq_len)
        if n_windows < 1:
            raise DatasetError(f"the {self.split} split is shorter than one sequence of {seq_len}")
        stride = (len(self) - seq_len) // n_windows
        windows = torch.stack([self.tokens[i * stride:i * stride + seq_len] for i in range(n_windows)])
        return list(windows.split(batch_size))

"""Tokenize a corpus into uint16 shards and serve packed training batches from them.

Layout of a dataset folder::

    tokenizer.json        the tokenizer every shard was made with
    train_000.bin ...     uint16 token ids, documents joined by end-of-text
    val_000.bin ...
    meta.json             sources, counts, split rule
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..tokenizer import Tokenizer
from .corpus import Document, split_of

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
) -> dict:
    """Deduplicate, split, (train a tokenizer if none is given,) tokenize and write shards.

    ``progress(stage, n)`` is called as documents are read and tokenized.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    docs: list[Document] = []
    duplicates = 0
    for doc in documents:
        digest = hashlib.sha1(doc.text.encode()).digest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        docs.append(doc)
        if progress:
            progress("read", 1)
    if not docs:
        raise DatasetError("the corpus is empty: no readable text files were found")
    if tokenizer is None:
        train_texts = [d.text for d in docs if split_of(f"{d.source}/{d.path}", val_percent) == "train"]
        tokenizer = Tokenizer.train(train_texts or [d.text for d in docs], vocab_size=vocab_size)
    if tokenizer.vocab_size > 65535:
        raise DatasetError("uint16 shards need a vocabulary under 65,536 tokens")
    tokenizer.save(out / "tokenizer.json")

    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    files = {"train": 0, "val": 0}
    chars = {"train": 0, "val": 0}
    batch = 256
    for start in range(0, len(docs), batch):
        chunk = docs[start:start + batch]
        for doc, ids in zip(chunk, tokenizer.encode_batch([d.text for d in chunk])):
            split = split_of(f"{doc.source}/{doc.path}", val_percent)
            splits[split].append(np.asarray(ids + [tokenizer.eos_id], dtype=np.uint16))
            files[split] += 1
            chars[split] += len(doc.text.encode())
        if progress:
            progress("tokenize", len(chunk))

    counts = {}
    for split, arrays in splits.items():
        for old in out.glob(f"{split}_*.bin"):
            old.unlink()
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint16)
        counts[split] = int(tokens.size)
        for i in range(0, max(tokens.size, 1), SHARD_TOKENS):
            tokens[i:i + SHARD_TOKENS].tofile(out / f"{split}_{i // SHARD_TOKENS:03d}.bin")
    meta = {
        "format": "quicksilver-shards-v1",
        "dtype": "uint16",
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "val_percent": val_percent,
        "sources": sorted({d.source for d in docs}),
        "documents": files,
        "bytes": chars,
        "tokens": counts,
        "duplicates_dropped": duplicates,
    }
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

"""Corpus sources, deterministic split, tokenization into uint16 shards, packed batches."""
from .corpus import Document, folder_source, stdlib_source, split_of
from .shards import ShardDataset, build_dataset

__all__ = ["Document", "folder_source", "stdlib_source", "split_of", "ShardDataset", "build_dataset"]

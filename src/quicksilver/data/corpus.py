"""Corpus sources: each yields documents (path, text) in a deterministic order."""
from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".py", ".pyi", ".md", ".rst", ".txt", ".toml", ".cfg", ".json", ".yaml", ".yml",
                 ".js", ".ts", ".c", ".h", ".cpp", ".rs", ".go", ".java", ".sh")
MAX_FILE_BYTES = 2_000_000  # generated blobs and data files are not useful training text


@dataclass(frozen=True)
class Document:
    source: str
    path: str  # relative to the source root: the split key, stable across machines
    text: str
    license: str = ""  # SPDX expression of the file's license, when known
    origin: str = ""  # where it came from: "sympy==1.14.0", "python 3.11.7", a folder name


def split_of(path: str, val_percent: float) -> str:
    """'val' or 'train' by a hash of the document path: the same on every machine and every run."""
    bucket = int.from_bytes(hashlib.sha1(path.encode()).digest()[:4], "big") % 10_000
    return "val" if bucket < val_percent * 100 else "train"


def _read_text(file: Path) -> str | None:
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            return None
        return file.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _walk(root: Path, suffixes: tuple[str, ...], skip_dirs: tuple[str, ...]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(suffixes):
                yield Path(dirpath) / name


def stdlib_source() -> Iterator[Document]:
    """Every ``.py`` file of the running interpreter's standard library (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for file in _walk(root, (".py",), ("site-packages", "dist-packages", "__pycache__")):
        text = _read_text(file)
        if text:
            yield Document("stdlib", file.relative_to(root).as_posix(), text, license="PSF-2.0",
                           origin=f"python {platform.python_version()}")


def folder_source(folder: str | Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> Iterator[Document]:
    """Any folder of text or code: files with a known text suffix, valid UTF-8, under 2 MB."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    for file in _walk(root, suffixes, ("__pycache__", "node_modules")):
        text = _read_text(file)
        if text:
            yield Document(root.name, file.relative_to(root).as_posix(), text, origin=root.name)

"""Memory-mapped loading of safetensors checkpoints into an already-built module.

A checkpoint folder holds one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
Every tensor is checked (present, expected shape) from the file headers *before* anything is read,
so a wrong checkpoint fails in one sentence naming the tensor.  Then each tensor is memory-mapped
with ``safe_open``, cast to the target dtype and device, and copied into its parameter: the peak
memory is the model plus one tensor, and nothing is ever unpickled.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..layout import INDEX_NAME, WEIGHTS_NAME, CheckpointError, read_weight_map


def tensor_files(folder: Path) -> dict[str, Path]:
    """Which file holds each tensor: from the index when there is one, else from the file headers."""
    index = folder / INDEX_NAME
    if index.is_file():
        files = {name: folder / file for name, file in read_weight_map(index).items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise CheckpointError(f"weight file {path} listed in the index is missing")
        return files
    paths = [folder / WEIGHTS_NAME] if (folder / WEIGHTS_NAME).is_file() else sorted(folder.glob("*.safetensors"))
    if not paths:
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = " (pickle files are never loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{folder} holds no safetensors weights{hint}")
    files: dict[str, Path] = {}
    for path in paths:
        with _open(path) as f:
            files.update({name: path for name in f.keys()})
    return files


@contextmanager
def _open(path: Path) -> Iterator:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: {e})") from None


def load_into(module: torch.nn.Module, folder: Path, name_map: dict[str, str], device: str | torch.device,
              dtype: torch.dtype, progress: bool | None = None,
              ignore: Callable[[str], bool] | None = None) -> None:
    """Fill ``module``'s parameters (built on the meta device) from ``folder``.

    ``name_map`` maps each checkpoint tensor name to the module's parameter name.  A checkpoint tensor
    not in the map (unless ``ignore(name)``), a mapped tensor missing from it, or one of the wrong shape
    is a ``CheckpointError`` naming that tensor.  ``progress``: a bar over the tensors (None = only on
    a terminal).
    """
    files = tensor_files(folder)
    params = dict(module.named_parameters())
    missing = [name for name in name_map if name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder}: tensor '{missing[0]}' is missing from the checkpoint{more}")
    unexpected = [name for name in files if name not in name_map and not (ignore and ignore(name))]
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor '{unexpected[0]}' in the checkpoint "
                              "(is config.json the one that came with these weights?)")
    by_file: dict[Path, list[str]] = {}
    for name in name_map:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():  # shapes from the headers: no tensor is read yet
        with _open(path) as f:
            for name in names:
                shape = tuple(f.get_slice(name).get_shape())
                want = tuple(params[name_map[name]].shape)
                if shape != want:
                    raise CheckpointError(f"{folder}: tensor '{name}' has shape {shape}, the config implies {want}")
    module.to(dtype=dtype)  # still on meta: free, so the device never holds a float32 copy
    module.to_empty(device=device)
    params = dict(module.named_parameters())  # materialising replaced the meta parameters
    show = sys.stderr.isatty() if progress is None else progress
    with _progress(len(name_map), f"loading {folder.name}", show) as advance, torch.no_grad():
        for path, names in by_file.items():
            with _open(path) as f:
                for name in names:
                    params[name_map[name]].copy_(f.get_tensor(name))  # copy_ casts dtype and moves device
                    advance()


@contextmanager
def _progress(total: int, description: str, show: bool) -> Iterator[Callable[[], None]]:
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rich.console import Console
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"),
               TimeRemainingColumn())
    # On a terminal the bar disappears when done; elsewhere (asked for explicitly) its last state stays.
    with Progress(*columns, console=Console(stderr=True), transient=sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)

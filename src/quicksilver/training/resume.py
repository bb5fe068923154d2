"""A run's folder and checkpoints, for exact resume and for never losing one.

* **A run owns its out_dir.**  ``claim_out_dir`` refuses a folder that holds anything unless the run
  continues (``--resume``) or replaces what is there (``--overwrite``, which deletes only what a run
  writes).  The run's id is kept in ``run.json`` and in every checkpoint it writes.
* **Checkpoints are atomic.**  ``checkpoints/step-N`` is written completely (weights, optimizer
  tensors, trainer state) under a temporary name and only then renamed and named by the ``latest``
  pointer, so a crash at any moment leaves the previous checkpoint whole.  ``best/`` is written the
  same way and swapped in with one atomic exchange of two folders.
* **Pruning touches only this run's checkpoints**, older than the one just written, keeping the
  newest ``keep`` and the milestones; a checkpoint of another run in the same folder is never deleted.
* **Resume falls back**: when the checkpoint ``latest`` names is damaged (truncated, missing a file),
  ``read_checkpoint`` says so and resumes from the newest intact one.
* **A full disk is one error** (:class:`DiskFullError`): the half-written checkpoint is removed and
  the message names the folder, the step that was not saved and the one that is intact.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig
from ..loading.checkpoint import atomic_save_tensors, atomic_write_text, save_pretrained
from ..model import Transformer
from ..tokenizer import Tokenizer
from .distributed import DistInfo, full_optimizer_state

# What a run writes into its out_dir; ``--overwrite`` deletes these and nothing else.
RUN_FILES = ("checkpoints", "latest", "best", ".best.tmp", ".best.old", "log.jsonl", "run_config.json", "run.json")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _is_full(error: BaseException) -> int | None:
    """The errno when ``error`` means the storage is full; safetensors reports it in its message."""
    if isinstance(error, OSError) and error.errno in _FULL:
        return error.errno
    text = str(error)
    for code in _FULL:
        if f"(os error {code})" in text:
            return code
    return None


class DiskFullError(ConfigError):
    """The run's storage cannot take a checkpoint (no space or quota left): one sentence for the user."""


def claim_out_dir(out_dir: Path, resume: bool, overwrite: bool, write: bool = True, log=print) -> str:
    """Check that this run may use ``out_dir`` and return its run id (kept in ``run.json``).

    ``write`` False (the other ranks of a distributed run) only checks and reads."""
    held = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if held and not resume and not overwrite:
        shown = ", ".join(held[:3]) + (" ..." if len(held) > 3 else "")
        raise ConfigError(f"{out_dir} is not empty ({shown}): continue that run with --resume, or start over with "
                          f"--overwrite (which deletes its checkpoints), or choose another train.out_dir")
    if overwrite and held and write:
        for name in RUN_FILES:
            path = out_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        rest = sorted(p.name for p in out_dir.iterdir())
        log(f"--overwrite: deleted the previous run in {out_dir}" + (f" (kept other files: {', '.join(rest)})"
                                                                       if rest else ""))
    marker = out_dir / "run.json"
    if resume and marker.is_file():
        try:
            run_id = json.loads(marker.read_text())["run_id"]
            if isinstance(run_id, str) and run_id:
                return run_id
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            pass
    run_id = uuid.uuid4().hex
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"run_id": run_id}) + "\n")
    return run_id


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange) == 0:
        return True
    return False


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``final`` so that a crash leaves one of the two whole:
    a rename when ``final`` does not exist, an atomic exchange when it does (else two renames, with
    ``final``'s old copy kept under ``.old`` until the new one is in place; ``recover_dir`` undoes a
    crash between them)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = final.with_name("." + final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """After a crash between the two renames of ``replace_dir``: put the old copy back."""
    old = final.with_name("." + final.name + ".old")
    if not final.exists() and old.is_dir():
        os.replace(old, final)


def _disk_full(out_dir: Path, what: str, code: int, intact: str | None) -> DiskFullError:
    free = shutil.disk_usage(out_dir).free if out_dir.exists() else 0
    kept = f"the previous one ({intact}) is intact" if intact else "no earlier checkpoint exists"
    return DiskFullError(f"the disk holding {out_dir} is full ({free / 2**20:.1f} MiB free, {os.strerror(code)}): "
                         f"{what} was not written and {kept}; free space, then continue with --resume")


def _latest_name(out_dir: Path) -> str | None:
    pointer = out_dir / "latest"
    try:
        return pointer.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def save_checkpoint(out_dir: Path, model, opt, state: dict, tokenizer: Tokenizer, keep: int = 2,
                    keep_every: int = 0, weights: dict | None = None,
                    optimizer: dict | None = None) -> Path:
    """Write ``checkpoints/step-N`` completely, then point ``latest`` at it (atomic rename).

    ``weights``/``optimizer`` are full state tensors gathered by the caller (distributed runs);
    without them they are read from ``model`` and ``opt``.  Either way the files hold whole,
    unsharded tensors named as in a plain model, so any world size can load them."""
    ckpt_root = out_dir / "checkpoints"
    final = ckpt_root / f"step-{state['step']:07d}"
    tmp = ckpt_root / f".tmp-step-{state['step']:07d}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if weights is not None:
            model = plain_copy(model.config, weights)
        save_pretrained(model, tokenizer, tmp)
        if optimizer is None:
            optimizer = full_optimizer_state(model, model, opt, DistInfo())
        atomic_save_tensors(optimizer, tmp / "optimizer.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        replace_dir(tmp, final)
        atomic_write_text(out_dir / "latest", final.name + "\n")
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # give back the space the half-written copy took
        code = _is_full(e)
        if code:
            raise _disk_full(out_dir, f"the checkpoint of step {state['step']}", code, _latest_name(out_dir)) from None
        raise
    prune(ckpt_root, state, keep, keep_every)
    return final


def _run_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "trainer_state.json").read_text()).get("run_id")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def prune(ckpt_root: Path, state: dict, keep: int = 2, keep_every: int = 0) -> None:
    """Delete this run's older checkpoints (by ``run_id``), keeping the newest ``keep`` (the one just
    written included) and the milestones; other runs' checkpoints and newer steps are not touched."""
    run_id, step = state.get("run_id"), state["step"]
    own = []
    for folder in ckpt_root.glob("step-*"):
        try:
            n = int(folder.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if n <= step and run_id is not None and _run_of(folder) == run_id:
            own.append((n, folder))
    own.sort()
    for n, folder in own[:-keep] if keep > 0 else own:
        if keep_every and n % keep_every == 0:
            continue  # milestones stay, e.g. to measure decoding speed against training progress
        shutil.rmtree(folder, ignore_errors=True)


def save_best(out_dir: Path, model, tokenizer: Tokenizer, summary: dict) -> None:
    """Write ``best/`` whole under a temporary name, then swap it in (``replace_dir``)."""
    tmp, final = out_dir / ".best.tmp", out_dir / "best"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(model, tokenizer, tmp)
        atomic_write_text(tmp / "train_summary.json", json.dumps(summary, indent=2))
        replace_dir(tmp, final)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = _is_full(e)
        if code:
            raise _disk_full(out_dir, f"the best checkpoint (step {summary.get('step')})", code,
                             "best/" if final.is_dir() else None) from None
        raise


def plain_copy(mcfg: ModelConfig, weights: dict[str, torch.Tensor]) -> Transformer:
    """A CPU ``Transformer`` holding ``weights`` (for writing an FSDP run's gathered state)."""
    with torch.device("meta"):
        copy = Transformer(mcfg)
    copy.load_state_dict(weights, assign=True)
    return copy


def _read(folder: Path) -> tuple[dict, dict, dict]:
    from safetensors.torch import load_file
    weights = load_file(str(folder / "model.safetensors"))
    opt_state = load_file(str(folder / "optimizer.safetensors"))
    state = json.loads((folder / "trainer_state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError("trainer_state.json has no step")
    return weights, opt_state, state


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("-")[1])
    except (IndexError, ValueError):
        return -1


def read_checkpoint(out_dir: Path, log=print) -> tuple[dict, dict, dict] | None:
    """(weights, optimizer tensors, trainer state) of the run's latest checkpoint, or None when the
    run has none.  A damaged latest checkpoint is reported and the newest intact one is used instead;
    when none is intact, ConfigError says so."""
    recover_dir(out_dir / "best")
    name = _latest_name(out_dir)
    root = out_dir / "checkpoints"
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir() and _step_of(p) >= 0), key=_step_of,
                        reverse=True) if root.is_dir() else []
    if name is None and not candidates:
        return None
    if name is not None:  # the pointer's checkpoint first, then older ones
        first = root / name
        candidates = [first] + [p for p in candidates if p != first and _step_of(p) < _step_of(first)]
    problems = []
    for folder in candidates:
        try:
            found = _read(folder)
        except Exception as e:  # truncated safetensors, a missing file, bad JSON: try the previous one
            problems.append(f"{folder.name} ({type(e).__name__}: {str(e)[:80]})")
            continue
        if problems:
            log(f"warning: checkpoint {', '.join(problems)} is damaged; resuming from {folder.name}, the newest "
                f"intact checkpoint")
        return found
    raise ConfigError(f"no intact checkpoint in {root}: {'; '.join(problems) or 'none found'}; start over with "
                      f"--overwrite")

"""Which device to run on: the default, and one clear sentence when the asked-for one cannot work
(``--device cuda`` on a CPU-only PyTorch is a user error, not a traceback from deep inside torch)."""
from __future__ import annotations

KINDS = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """A device this machine or this PyTorch build cannot use (one sentence)."""


def resolve_device(device: str | None) -> str:
    """``device`` checked (``cpu``, ``cuda``, ``cuda:N``, ``mps``), or the default: cuda when a GPU is
    visible, else cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = str(device).partition(":")
    if kind not in KINDS or (index and not index.isdigit()):
        raise DeviceError(f"unknown device '{device}': use cpu, cuda (or cuda:N) or mps")
    if kind == "cuda":
        if torch.version.cuda is None and not getattr(torch.version, "hip", None):
            raise DeviceError(f"device '{device}' is not available: this PyTorch ({torch.__version__}) was built "
                              "without CUDA; use --device cpu, or install a CUDA build of PyTorch")
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{device}' is not available: no CUDA GPU is visible; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"device '{device}' is not available: this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device '{device}' is not available on this machine; use --device cpu")
    return str(device)


__all__ = ["DeviceError", "resolve_device", "KINDS"]

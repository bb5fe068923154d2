"""Where the bundled models live, without importing torch (``quicksilver models`` must start fast)."""
from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent.parent / "models"


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


__all__ = ["BUNDLED_DIR", "bundled_models"]

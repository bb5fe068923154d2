"""Combine block_diffusion.py runs made as separate processes (speed of each model beside its own
twin timing; bits/byte and infilling in others) into one block.json, block.md and block.png.

    python benchmarks/block_diffusion_combine.py --out benchmarks/results/block runs/measure runs/measure-block ...

Later folders add models and fill in the parts (settings, ppl, infill) earlier ones lack."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from block_diffusion import write_report


def combine(folders: list[Path]) -> dict:
    result: dict = {}
    for folder in folders:
        part = json.loads((folder / "block.json").read_text())
        if not result:
            result = {k: v for k, v in part.items() if k != "models"} | {"models": {}, "commands": []}
        result["commands"] += part.get("commands") or [part["command"]]
        for key, value in part["twin"].items():
            result["twin"].setdefault(key, value)
        for name, entry in part["models"].items():
            mine = result["models"].setdefault(name, {"settings": []})
            for key, value in entry.items():
                if key == "settings":
                    mine["settings"] += value
                elif value is not None:
                    mine.setdefault(key, value)
    result["command"] = " ; ".join(result["commands"])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = combine(args.folders)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "block.json").write_text(json.dumps(result, indent=1))
    write_report(result, args.out)
    print((args.out / "block.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

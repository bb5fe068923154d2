"""The ``quicksilver`` command.  Each command parses its options, calls the library, and turns
errors a user can cause into one clear sentence and a non-zero exit.

One module per command group (``generate``, ``train``, ``serve``, ``data``, ``bench``, ``evaluate``,
``control``: edit and json);
``common`` holds the app, the consoles and the error handling they share.  Nothing here or in them
imports torch (or any other heavy module) at import time: each command imports what it needs when
it runs, so ``quicksilver --help``, ``quicksilver models`` and argument errors answer at once
(``tests/test_cli_startup.py`` holds that line)."""
from __future__ import annotations

# Importing a command module registers its commands (in the order --help lists them).
from . import generate as _generate  # noqa: F401
from . import train as _train  # noqa: F401
from . import serve as _serve  # noqa: F401
from . import data as _data  # noqa: F401
from . import bench as _bench  # noqa: F401
from . import evaluate as _evaluate  # noqa: F401
from . import control as _control  # noqa: F401  (edit, json)
from .common import UserError, app, console, data_app, err_console, eval_app, user_errors
from .overrides import parse_overrides as _parse_overrides  # noqa: F401  (scripts/gpu/compile_probe.py uses it)


def main() -> None:
    app()


__all__ = ["app", "data_app", "eval_app", "console", "err_console", "UserError", "user_errors", "main"]

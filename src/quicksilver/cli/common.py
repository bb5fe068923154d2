"""What every command module shares: the typer apps, the consoles, and the handling of user errors
(one sentence, exit 2).  Imports nothing heavy (see the package's docstring)."""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quicksilver: masked-diffusion language models that draft whole answers and refine them in parallel.")
data_app = typer.Typer(no_args_is_help=True, help="Build training corpora.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model (or any OpenAI-compatible endpoint): "
                       "HumanEval pass@k, infilling, bits per byte, the speed-quality curve.")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """Bad input from the user: reported as one sentence, exit code 2."""


# The library's errors a user can cause, by module and class name: looked up only when an error is
# being reported (a module that was never imported cannot have raised), so no command pays for
# importing them up front.
USER_ERRORS = [("quicksilver.loading.layout", "CheckpointError"), ("quicksilver.config", "ConfigError"),
               ("quicksilver.data.shards", "DatasetError"), ("quicksilver.sampling.types", "GenerationError"),
               ("quicksilver.tokenizer", "TokenizerError"), ("quicksilver.chat", "ChatTemplateError"),
               ("quicksilver.device", "DeviceError"), ("quicksilver.threads", "ThreadsError")]


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, (UserError, FileNotFoundError)):
        return True
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return True
    return False


def user_errors(fn):
    """Report the errors a user can cause as 'error: <sentence>' with exit code 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_user_error(e):
                raise
            message = str(e).rstrip(".")
            err_console.print(Text("error: ", style="bold red") + Text(f"{message}."), soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def threads_option(help_text: str = "torch threads (default: QUICKSILVER_THREADS, else half the CPUs, at least 1).",
                   ) -> typer.models.OptionInfo:
    """The ``--threads`` option every command that decodes or trains takes (``quicksilver.threads``)."""
    return typer.Option(None, "--threads", help=help_text)

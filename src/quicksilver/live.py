"""A terminal view of the canvas being refined: masked positions as ░, tokens committed in the
latest step highlighted, earlier ones plain."""
from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .sampling import GenerationResult, StepEvent
from .tokenizer import Tokenizer

MASK_GLYPH = "░"


def render_canvas(tokenizer: Tokenizer, prompt: str, event: StepEvent, row: int = 0) -> Text:
    text = Text(prompt, style="bold")
    ids = event.canvas[row].tolist()
    fresh = event.committed[row].tolist()
    for token, new in zip(ids, fresh):
        if token == event.mask_id:
            text.append(MASK_GLYPH, style="dim")
            continue
        if token == tokenizer.eos_id:
            text.append("⏎eot", style="magenta")
            break
        text.append(tokenizer.token_text(token), style="black on bright_green" if new else "green")
    return text


class CanvasView:
    """Context manager: ``update`` is an ``on_step`` callback for ``LM.generate``."""

    def __init__(self, tokenizer: Tokenizer, prompt: str, console: Console) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.console = console
        self.live = Live(Text(prompt, style="bold"), console=console, refresh_per_second=30, transient=False)

    def __enter__(self) -> "CanvasView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def update(self, event: StepEvent) -> None:
        status = Text(f"step {event.step} · block {event.block}", style="dim")
        self.live.update(Group(render_canvas(self.tokenizer, self.prompt, event), status), refresh=True)

    def finish(self, result: GenerationResult) -> None:
        final = Text(self.prompt, style="bold")
        final.append(result.text)
        self.live.update(final, refresh=True)

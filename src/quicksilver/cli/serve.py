"""`quicksilver serve`: the OpenAI-compatible server and the playground (docs/serving.md)."""
from __future__ import annotations

from typing import List, Optional

import typer

from .common import UserError, app, console, err_console, threads_option, user_errors


@app.command()
@user_errors
def serve(
    model: str = typer.Option("coder-tiny", "--model", "-m",
                              help="Bundled model name, checkpoint folder (Quicksilver, LLaDA, Dream, DiffusionGemma) "
                                   "or Hugging Face Hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QUICKSILVER_API_KEY", show_envvar=True,
                                          help="Require 'Authorization: Bearer KEY' on /v1/*."),
    cors_origin: List[str] = typer.Option([], "--cors-origin", help="Allow this browser origin (repeatable); CORS is off by default."),
    max_batch: int = typer.Option(8, help="Rows decoded together (a request takes n rows)."),
    max_queue: int = typer.Option(64, help="Requests that may wait; past it the server answers 429."),
    max_n: int = typer.Option(4, help="Most choices (n) per request."),
    time_limit: float = typer.Option(120.0, help="Seconds a request may decode before it is cut off."),
    max_body: int = typer.Option(1_000_000, help="Largest request body in bytes (413 past it)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    threads: Optional[int] = threads_option(),
    body_timeout: float = typer.Option(30.0, help="Seconds a client has to send its request body (408 after)."),
    special_tokens_in_text: bool = typer.Option(False, "--special-tokens-in-text",
                                                help="Read special-token strings typed in prompts and messages (e.g. "
                                                     "'<|endoftext|>') as control tokens; by default they are text."),
):
    """Serve MODEL over the OpenAI API (completions, chat, streaming with diffusion drafts) and the
    playground page at http://HOST:PORT/."""
    if min(max_batch, max_queue, max_n, max_body) < 1 or time_limit <= 0 or body_timeout <= 0:
        raise UserError("--max-batch, --max-queue, --max-n, --max-body, --time-limit and --body-timeout must be positive")
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    from ..threads import resolve_threads

    count, source = resolve_threads(threads)
    try:
        import uvicorn

        from ..server import ServerSettings, create_app
    except ImportError:
        raise UserError("the server needs FastAPI and uvicorn: pip install 'quicksilver-lm[serve]'") from None
    from ..device import resolve_device
    from ..loading.checkpoint import resolve_model_path

    resolve_model_path(model)  # a missing model is an error now, not after the socket is up
    device = resolve_device(device)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print(f"warning: listening on {host} without an API key: anyone who can reach this port can "
                          "use the model (set --api-key or QUICKSILVER_API_KEY)", style="yellow")
    settings = ServerSettings(model=model, api_key=api_key or None, cors_origins=tuple(cor for cor in cors_origin),
                              max_batch=max_batch, max_queue=max_queue, max_n=max_n, time_limit_s=time_limit,
                              max_body=max_body, device=device, body_timeout_s=body_timeout,
                              special_tokens_in_text=special_tokens_in_text, threads=count, threads_source=source)
    console.print(f"serving {model} on http://{host}:{port}/ (OpenAI API at /v1; "
                  f"{'API key required' if api_key else 'no API key'}; {device}, {count} torch thread"
                  f"{'s' if count > 1 else ''} ({source}))", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


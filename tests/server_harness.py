"""A real uvicorn server (``create_app``) on 127.0.0.1 and a free port, in a thread of the test process:
the server tests use it so they can pass loaders and small limits (tests/live_server.py runs the CLI)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn

from quicksilver.server import ServerSettings, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(settings: ServerSettings | None = None, wait_ready: bool = True, **app_kwargs):
    """Yield the base URL of a running server; stop it (graceful drain) on exit."""
    settings = settings or ServerSettings()
    port = free_port()
    config = uvicorn.Config(create_app(settings, **app_kwargs), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    if wait_ready:
        wait_healthy(base)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_healthy(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the test server never became healthy")


def metric(base: str, name: str) -> float:
    """One sample of ``/metrics`` by its full name (with labels), e.g. 'quicksilver_requests_active'."""
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)

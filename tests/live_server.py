"""A real ``quicksilver serve`` in a subprocess on 127.0.0.1 and a free port, for end-to-end tests.

Used by the playground (browser) test and the load benchmark's smoke test: both must talk to the
same server a user starts, over real sockets.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLI_SERVER_KEY = "test-key-not-secret"  # the ``cli_server`` fixture's --api-key (tests/conftest.py)

@dataclass
class LiveServer:
    url: str
    api_key: str | None
    log: Path

    def post(self, path: str, body: dict, timeout: float = 60.0) -> dict:
        """A non-streamed JSON request (with the key, when the server has one)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(tmp: Path, model: str = "coder-tiny", api_key: str | None = None,
                extra: list[str] | None = None, ready_s: float = 120.0) -> Iterator[LiveServer]:
    """Start ``quicksilver serve``, wait until ``/health`` answers 200, stop it (SIGTERM) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "quicksilver.cli", "serve", "--model", model,
           "--host", "127.0.0.1", "--port", str(port), *(extra or [])]
    if api_key:
        cmd += ["--api-key", api_key]
    log = tmp / f"serve-{port}.log"
    # One torch thread: the test machine is small and shared; the tests assert behaviour, not speed.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"quicksilver serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"quicksilver serve not healthy after {ready_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield LiveServer(url=url, api_key=api_key, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

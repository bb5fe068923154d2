"""benchmarks/serve_load.py against a real ``quicksilver serve``: 2 clients for about 3 seconds.

No timing is asserted (the machine is shared); the run must have no failures and sane JSON.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def run_load(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_two_clients_for_three_seconds(cli_server, tmp_path):
    out = tmp_path / "load.json"
    proc = run_load("--url", cli_server.url, "--api-key", cli_server.api_key, "--clients", "2", "--duration", "3",
                    "--max-tokens", "16", "--warmup", "1", "--diffusing", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])  # the one JSON line
    assert last == json.loads(out.read_text())
    assert last["model"] == "coder-tiny" and last["settings"]["diffusing"] is True
    (level,) = last["levels"]
    assert level["clients"] == 2
    assert level["failures"] == 0, level["errors"]
    assert level["requests"] >= 2
    assert 0 < level["tokens_per_request"] <= 16
    assert level["output_tokens_per_s"] > 0 and level["requests_per_s"] > 0
    assert 0 < level["ttft_p50_ms"] <= level["ttft_p99_ms"]
    assert level["ttft_p50_ms"] <= level["latency_p50_ms"] <= level["latency_p99_ms"]
    assert "| clients |" in proc.stdout  # the table


def test_only_loopback_urls_and_clear_errors(tmp_path):
    proc = run_load("--url", "http://example.com:8000", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --url must point at this machine")
    port_without_server = "http://127.0.0.1:9"
    proc = run_load("--url", port_without_server, "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no server answers")
    assert not (tmp_path / "x.json").exists()

"""An OpenAI-compatible endpoint as the system under test, against a stub server on 127.0.0.1."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from quicksilver.eval.endpoint import EndpointError, EndpointSystem, completions_url
from quicksilver.eval.humaneval import load_problems, model_prompt, run_humaneval
from quicksilver.eval.infill import boundary, build_tasks, reference_fill, run_infill
from quicksilver.eval.sandbox import SandboxLimits


class Stub:
    """Answers /v1/completions with the canonical solution (or the reference middle when a suffix is sent)."""

    def __init__(self, problems, fail: bool = False):
        self.solutions = {model_prompt(p["prompt"]): "\n" + p["canonical_solution"] for p in problems.values()}
        self.middles = {boundary(t): reference_fill(t) for t in build_tasks(problems, "single-line")}
        self.requests: list[dict] = []
        self.fail = fail
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if stub.fail or self.path != "/v1/completions":
                    self.send_response(500 if stub.fail else 404)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "boom"}}')
                    return
                if "suffix" in body:
                    text = stub.middles[(body["prompt"], body["suffix"])] + "\n    junk()\n"
                else:
                    text = stub.solutions[body["prompt"]] + "\n\ndef more():\n    pass\n"
                payload = {"id": "cmpl-1", "object": "text_completion", "model": body.get("model", "m"),
                           "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18,
                                     "forward_passes": 2}}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_urls():
    assert completions_url("http://h:1") == "http://h:1/v1/completions"
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/completions"
    assert completions_url("http://h:1/v1/completions") == "http://h:1/v1/completions"


def test_humaneval_and_infill_through_an_endpoint():
    problems = load_problems(2)
    limits = SandboxLimits(timeout_s=5.0)
    with Stub(problems) as stub:
        system = EndpointSystem(stub.url, model="stub-model", api_key="k", extra={"steps": 4})
        result = run_humaneval(system, problems=problems, max_new_tokens=64, sandbox=limits)
        assert result["pass@1"] == 1.0
        body = stub.requests[0]["body"]
        assert body["model"] == "stub-model" and body["max_tokens"] == 64 and body["temperature"] == 0.0
        assert body["steps"] == 4 and "\ndef" in body["stop"] and len(body["stop"]) <= 4
        assert stub.requests[0]["auth"] == "Bearer k"
        assert system.usage.tokens_per_forward == pytest.approx(4.0)  # 8 tokens over 2 forward passes
        filled = run_infill(system, "single-line", problems=problems, sandbox=limits)
        assert filled["pass_rate"] == 1.0  # "junk()" after the line is trimmed away
        assert all("suffix" in r["body"] for r in stub.requests[2:])


def test_endpoint_errors_are_clear():
    problems = load_problems(1)
    with Stub(problems, fail=True) as stub:
        with pytest.raises(EndpointError, match="HTTP 500"):
            EndpointSystem(stub.url).request("x", 4)
        port = stub.server.server_address[1]
    with pytest.raises(EndpointError, match="cannot reach"):
        EndpointSystem(f"http://127.0.0.1:{port}", timeout_s=2).request("x", 4)

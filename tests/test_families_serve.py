"""The open families through a real ``quicksilver serve`` (started the way the server's own tests
start it: ``tests/live_server.py``): a tiny random DiffusionGemma streams its drafts, and the Dream
reference answers a chat request through its own template."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.dg_tiny import make_folder
from tests.live_server import live_server

HERE = Path(__file__).parent


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _stream(url: str, body: dict) -> list:
    """POST with stream=True and return the SSE payloads (JSON objects, then the string '[DONE]')."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    frames = []
    with urllib.request.urlopen(req, timeout=120) as response:
        assert response.status == 200
        for raw in response.read().decode().split("\n\n"):
            data = "".join(line[5:].strip() for line in raw.splitlines() if line.startswith("data:"))
            if data:
                frames.append(data if data == "[DONE]" else json.loads(data))
    return frames


def test_diffusion_gemma_streams_its_drafts_through_the_server(tmp_path):
    folder = make_folder(tmp_path / "diffusion-gemma")
    with live_server(tmp_path, model=str(folder)) as srv:
        model_id = _get(srv.url + "/v1/models")["data"][0]["id"]
        body = {"model": model_id, "prompt": "def add(a, b):", "max_tokens": 24, "seed": 0}
        frames = _stream(srv.url + "/v1/completions", {**body, "diffusing": True})
        whole = srv.post("/v1/completions", body)["choices"][0]["text"]
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    drafts = [c["draft"] for c in chunks if c.get("draft")]
    assert len(drafts) >= 2  # the drafts of the denoising steps, streamed as they come
    assert any(t is None for t in drafts[0]["tokens"])  # positions not yet accepted are shown as masked
    text = "".join(c["choices"][0].get("text") or "" for c in chunks if c.get("choices"))
    assert text == whole  # the streamed pieces add up to the completion (seeded: the same run)
    assert all(c.get("object") in ("text_completion", None) for c in chunks)


def test_dream_answers_a_chat_request_through_its_template(tmp_path):
    with live_server(tmp_path, model=str(HERE / "data" / "dream_tiny")) as srv:
        model_id = _get(srv.url + "/v1/models")["data"][0]["id"]
        reply = srv.post("/v1/chat/completions", {"model": model_id, "max_tokens": 4, "seed": 0,
                                                  "messages": [{"role": "user", "content": "Hi"}]})
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["prompt_tokens"] == 59  # the ChatML prompt with Dream's default system prompt

"""The OpenAI-compatible server, live on 127.0.0.1 (real uvicorn, the bundled coder-tiny, the official
``openai`` client and raw HTTP)."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

import quicksilver
from quicksilver.server import ServerSettings
from tests.server_harness import live_server, metric, wait_healthy

torch.set_num_threads(1)
MODEL = "coder-tiny"
PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def lm():
    return quicksilver.load(MODEL, device="cpu")


@pytest.fixture(scope="module")
def server(lm):
    settings = ServerSettings(max_batch=8, max_queue=64, default_max_tokens=16, max_tokens_limit=256)
    with live_server(settings, backend=lm) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def sse_frames(base: str, path: str, body: dict) -> list[str]:
    with httpx.stream("POST", f"{base}{path}", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    return [f for f in text.split("\n\n") if f]


# -- the official client ----------------------------------------------------------------------------
@pytest.mark.parametrize("temperature,seed", [(0.0, 7), (0.8, 7)])
def test_streamed_deltas_concatenate_to_the_non_streamed_text(client, temperature, seed):
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=temperature, seed=seed)
    whole = client.completions.create(**args)
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **args) if c.choices]
    assert len([p for p in pieces if p]) > 1  # it really streamed
    assert "".join(pieces) == whole.choices[0].text
    assert whole.usage.completion_tokens == 24 and whole.choices[0].finish_reason == "length"


def test_server_text_is_the_library_text(client, lm):
    """At temperature 0 the server returns what the library decodes with the server's default policy."""
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
    policy = dataclasses.replace(lm.default_policy, max_new_tokens=20)
    direct = lm.generate_ids([lm.encode(PROMPT)], policy)
    assert whole.choices[0].text == direct.texts[0]
    assert whole.model_extra["stats"]["nfe"] == direct.nfe


def test_chat_streams_role_then_content_equal_to_the_whole(client):
    messages = [{"role": "user", "content": "Write a function that adds two numbers."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0, seed=1)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                                 seed=1, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert whole.choices[0].message.role == "assistant"


def test_stop_sequences_cut_both_ways(client):
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0)
    free = client.completions.create(**args).choices[0].text
    stop = free[8:10]  # a string the free text contains
    cut = client.completions.create(stop=[stop], **args)
    assert cut.choices[0].text == free[:free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=[stop], stream=True, **args))
    assert streamed == cut.choices[0].text


def test_n_choices_and_fill_in_the_middle(client, lm):
    many = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0.9, seed=3, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.text for c in many.choices}) > 1  # sampled choices differ
    prefix, suffix = "def add(a, b):\n    return", "\n\nprint(add(1, 2))\n"
    fim = client.completions.create(model=MODEL, prompt=prefix, suffix=suffix, max_tokens=12, temperature=0)
    policy = dataclasses.replace(lm.default_policy, max_new_tokens=12)
    direct = lm.infill_ids(lm.encode(prefix), lm.encode(suffix), policy)
    assert fim.choices[0].text == direct.texts[0]
    without_suffix = client.completions.create(model=MODEL, prompt=prefix, max_tokens=12, temperature=0)
    assert without_suffix.choices[0].text != fim.choices[0].text  # the suffix was used


# -- the SSE wire format -----------------------------------------------------------------------------
def test_sse_frames_drafts_stats_usage_and_done(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "block_length": 8, "stream": True,
            "diffusing": True, "stream_options": {"include_usage": True}}
    frames = sse_frames(server, "/v1/completions", body)
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[len("data: "):]) for f in frames[:-1]]
    drafts = [c["draft"] for c in chunks if "draft" in c]
    assert drafts and all(len(d["tokens"]) == 16 for d in drafts)
    masked = [sum(t is None for t in d["tokens"]) for d in drafts]
    assert masked == sorted(masked, reverse=True) and masked[-1] < masked[0]  # the canvas fills in
    assert {d["block"] for d in drafts} == {0, 1}
    assert all(c["choices"][0]["text"] == "" for c in chunks if "draft" in c)  # drafts carry no text
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and set(finish[0]["stats"]) == {"nfe", "generated_tokens", "seconds", "tokens_per_forward"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    final_draft = "".join(t for t in drafts[-1]["tokens"] if t is not None)
    assert final_draft.startswith(text) and text


def test_plain_stream_has_no_drafts_and_chat_drafts_have_empty_deltas(server):
    plain = sse_frames(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "stream": True})
    assert plain[-1] == "data: [DONE]" and not any('"draft"' in f for f in plain)
    chat = sse_frames(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                        "max_tokens": 8, "stream": True, "diffusing": True})
    chunks = [json.loads(f[6:]) for f in chat[:-1]]
    drafts = [c for c in chunks if "draft" in c]
    assert drafts and all(c["choices"][0]["delta"] == {} for c in drafts)
    assert chat[-1] == "data: [DONE]"


# -- bad input ---------------------------------------------------------------------------------------
LONG = "x = 1\n" * 2000
BAD = [
    ("empty prompt", {"prompt": ""}, 400, "prompt"),
    ("prompt over context", {"prompt": LONG, "max_tokens": 4}, 400, "context length"),
    ("negative max_tokens", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("huge max_tokens", {"prompt": "x", "max_tokens": 10**12}, 400, "max_tokens"),
    ("max_tokens over the cap", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ("temperature < 0", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("top_p > 1", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("n over cap", {"prompt": "x", "n": 5}, 400, "n must be at most 4"),
    ("too many stops", {"prompt": "x", "stop": [f"s{i}" for i in range(33)]}, 400, "at most 32"),
    ("unknown commit rule", {"prompt": "x", "commit": "guess"}, 400, "commit"),
    ("zero block length", {"prompt": "x", "block_length": 0}, 400, "block_length"),
    ("prompt of wrong type", {"prompt": 42}, 400, "prompt"),
    ("missing prompt", {}, 400, "prompt"),
    ("unknown model", {"prompt": "x", "model": "gpt-9"}, 404, "does not exist"),
    ("logprobs of a diffusion model", {"prompt": "x", "logprobs": 3}, 400, "autoregressive"),
    ("n far over cap", {"prompt": "x", "n": 500}, 400, "n must be at most 4"),
    # strict types: a string is not a number or a boolean, a float is not an integer
    ("max_tokens as a string", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("stream as a string", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("echo as a number", {"prompt": "x", "echo": 1}, 400, "echo"),
    ("temperature as a string", {"prompt": "x", "temperature": "0.5"}, 400, "temperature"),
    ("n as a float", {"prompt": "x", "n": 2.0}, 400, "'n'"),
    ("seed as a string", {"prompt": "x", "seed": "7"}, 400, "seed"),
    ("stop as a number", {"prompt": "x", "stop": 5}, 400, "stop"),
]


@pytest.mark.parametrize("name,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_shaped_4xx(server, name, body, status, words):
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=30)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]


RAW = [
    ("malformed JSON", b'{"prompt": "x"', "application/json", 400, "not valid JSON"),
    ("wrong content type", b"prompt=x", "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', "application/json", 400, "UTF-8"),
    ("10 MB body", b'{"prompt": "' + b"a" * 10_000_000 + b'"}', "application/json", 413, "larger than"),
    ("JSON that is not an object", b"[1, 2]", "application/json", 400, "invalid"),
]


# A lone UTF-16 surrogate is a valid JSON escape but not text: each field that carries text.
SURROGATES = [
    ("/v1/completions", b'{"prompt": "a\\ud800b"}', "'prompt'"),
    ("/v1/completions", b'{"prompt": ["\\udfff"]}', "'prompt.0'"),
    ("/v1/completions", b'{"prompt": "x", "suffix": "\\ud800"}', "'suffix'"),
    ("/v1/completions", b'{"prompt": "x", "stop": "\\ud800"}', "'stop'"),
    ("/v1/completions", b'{"prompt": "x", "stop": ["ok", "\\udc00"]}', "'stop.1'"),
    ("/v1/completions", b'{"prompt": "x", "model": "\\ud800"}', "'model'"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "'messages.0.content'"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
     "'messages.0.content.0.text'"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stop": ["\\ud800"]}', "'stop.0'"),
    ("/v1/completions", b'{"prompt": "x", "\\ud800": 1}', "'\\ud800'"),  # even an unknown key
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x", "name": "\\udfff"}]}',
     "'messages.0.name'"),
]


@pytest.mark.parametrize("path,data,words", SURROGATES, ids=[d.decode() for _, d, _ in SURROGATES])
def test_lone_surrogates_are_400_naming_the_field(server, path, data, words):
    r = httpx.post(f"{server}{path}", content=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert words in error["message"] and "surrogate" in error["message"], error
    assert error["type"] == "invalid_request_error"


ENCODINGS = [  # every other way a body's bytes can fail to be text or JSON: a 400, never a 5xx
    ("UTF-16 body", '{"prompt": "x"}'.encode("utf-16"), "not valid UTF-8"),
    ("a surrogate encoded as UTF-8 bytes (CESU-8)", b'{"prompt": "\xed\xa0\x80"}', "not valid UTF-8"),
    ("overlong UTF-8", b'{"prompt": "\xc0\xaf"}', "not valid UTF-8"),
    ("100,000 nested lists", b'{"prompt": "x", "stop": ' + b"[" * 100000 + b"]" * 100000 + b"}", "not valid JSON"),
    ("a 5,000-digit integer", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ("NaN temperature", b'{"prompt": "x", "temperature": NaN}', "temperature"),
]


@pytest.mark.parametrize("name,data,words", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_encoding_problems_are_400(server, name, data, words):
    r = httpx.post(f"{server}/v1/completions", content=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_a_surrogate_pair_is_text(server):
    """An escaped pair (an emoji) is valid: only lone halves are refused."""
    r = httpx.post(f"{server}/v1/completions", content=b'{"prompt": "x = \\ud83d\\ude00", "max_tokens": 2}',
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name,data,kind,status,words", RAW, ids=[r[0] for r in RAW])
def test_malformed_bodies_get_4xx(server, name, data, kind, status, words):
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = httpx.post(f"{server}{path}", content=data, headers={"Content-Type": kind}, timeout=30)
        assert r.status_code == status, (path, r.text)
        assert words in r.json()["error"]["message"]


def test_chat_bad_messages_are_400(server):
    for body in ({"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
                 {"messages": [{"role": "user", "content": None}]}, {"messages": "hello"}):
        r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["message"]


# -- disconnects, metrics, open routes ---------------------------------------------------------------
def test_fifty_clients_that_leave_mid_stream_leave_the_server_healthy(server):
    cancelled_before = metric(server, 'quicksilver_requests_total{status="cancelled"}')
    body = {"prompt": PROMPT, "max_tokens": 64, "block_length": 4, "stream": True}

    def leave_after_first_chunk(_):
        with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    return True  # closing the stream here drops the connection mid-stream
        return False

    with ThreadPoolExecutor(50) as pool:
        assert all(pool.map(leave_after_first_chunk, range(50)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if metric(server, "quicksilver_requests_active") == 0 and metric(server, "quicksilver_requests_queued") == 0:
            break
        time.sleep(0.1)
    assert metric(server, "quicksilver_requests_active") == 0
    assert metric(server, "quicksilver_requests_queued") == 0
    assert metric(server, 'quicksilver_requests_total{status="cancelled"}') - cancelled_before == 50
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    t0 = time.monotonic()
    r = httpx.post(f"{server}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - t0 < 10


def test_a_non_streaming_client_that_leaves_cancels_its_request(server):
    cancelled_before = metric(server, 'quicksilver_requests_total{status="cancelled"}')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/completions", json={"prompt": PROMPT, "max_tokens": 250}, timeout=0.5)
    deadline = time.monotonic() + 20
    while metric(server, 'quicksilver_requests_total{status="cancelled"}') == cancelled_before:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.1)
    assert metric(server, "quicksilver_requests_active") == 0


def test_metrics_count_tokens_and_forward_passes(server):
    tokens, passes = metric(server, "quicksilver_generated_tokens_total"), metric(server, "quicksilver_forward_passes_total")
    count = metric(server, "quicksilver_request_seconds_count")
    r = httpx.post(f"{server}/v1/completions", json={"prompt": PROMPT, "max_tokens": 12}, timeout=30).json()
    assert metric(server, "quicksilver_generated_tokens_total") - tokens == r["usage"]["completion_tokens"] == 12
    assert metric(server, "quicksilver_forward_passes_total") - passes == r["stats"]["nfe"]
    assert metric(server, "quicksilver_request_seconds_count") == count + 1


def test_open_routes(server):
    assert httpx.get(f"{server}/version").json()["version"] == quicksilver.__version__
    models = httpx.get(f"{server}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "access-control-allow-origin" not in httpx.options(
        f"{server}/v1/completions", headers={"Origin": "https://evil.example",
                                             "Access-Control-Request-Method": "POST"}).headers  # CORS off
    assert httpx.get(f"{server}/v1/nowhere").status_code == 404


# -- servers with other settings ---------------------------------------------------------------------
def test_health_is_503_until_the_model_is_loaded(lm):
    gate = threading.Event()

    def slow_loader(settings):
        gate.wait(30)
        return lm

    with live_server(ServerSettings(), wait_ready=False, loader=slow_loader) as base:
        assert httpx.get(f"{base}/health").status_code == 503
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        gate.set()
        wait_healthy(base)
        assert httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_api_key_guards_every_v1_route_and_cors_when_asked(lm):
    settings = ServerSettings(api_key="s3cret", cors_origins=("http://localhost:3000",))
    with live_server(settings, backend=lm) as base:
        routes = [("GET", "/v1/models", None), ("GET", f"/v1/models/{MODEL}", None),
                  ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}),
                  ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
                  ("GET", "/v1/unknown", None)]
        for method, path, body in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = httpx.request(method, f"{base}{path}", json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{base}/health").status_code == 200
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        expected = lm.generate_ids([lm.encode("x")], dataclasses.replace(lm.default_policy, max_new_tokens=2)).texts[0]
        assert keyed.completions.create(model=MODEL, prompt="x", max_tokens=2).choices[0].text == expected
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).models.list()
        pre = httpx.options(f"{base}/v1/completions", headers={"Origin": "http://localhost:3000",
                                                               "Access-Control-Request-Method": "POST"})
        assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "access-control-allow-credentials" not in pre.headers


def test_a_full_queue_answers_429(lm):
    settings = ServerSettings(max_batch=1, max_queue=1)
    with live_server(settings, backend=lm) as base:
        body = {"prompt": PROMPT, "max_tokens": 300, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as running:
            lines = running.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)  # decoding: holds the only slot
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as waiting:
                deadline = time.monotonic() + 10
                while metric(base, "quicksilver_requests_queued") < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                r = httpx.post(f"{base}/v1/completions", json={"prompt": "x"}, timeout=10)
                assert r.status_code == 429
                assert r.json()["error"]["type"] == "rate_limit_error" and "busy" in r.json()["error"]["message"]
                assert waiting.status_code == 200


def test_serve_refuses_bad_options_with_one_sentence():
    from typer.testing import CliRunner

    from quicksilver.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--model", "no-such-model"])
    assert missing.exit_code == 2 and "error: unknown model 'no-such-model'" in missing.output
    bad = runner.invoke(app, ["serve", "--max-queue", "0"])
    assert bad.exit_code == 2 and "must be positive" in bad.output


def test_an_error_after_the_first_byte_is_an_error_frame_then_done(lm):
    """Fault injection: a backend (the real model) that fails at its third forward pass."""
    from quicksilver.api import LM
    from quicksilver.sampling import GenerationError

    class FailsMidway(LM):
        decoder = None  # served through generate_ids, whose on_step carries the failure

        def generate_ids(self, prompts, policy, on_step=None):
            def failing(event):
                if on_step is not None:
                    on_step(event)
                if event.step == 3:
                    raise GenerationError("the decoder failed at step 3")
            return super().generate_ids(prompts, policy, failing)

    with live_server(ServerSettings(), backend=FailsMidway(lm.model, lm.tokenizer, MODEL)) as base:
        frames = sse_frames(base, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "stream": True})
        assert frames[-1] == "data: [DONE]"
        assert json.loads(frames[-2][6:])["error"]["message"] == "the decoder failed at step 3"
        assert any(json.loads(f[6:]).get("choices") for f in frames[:-2])  # text came before the failure
        r = httpx.post(f"{base}/v1/completions", json={"prompt": PROMPT, "max_tokens": 16}, timeout=30)
        assert r.status_code == 400 and "step 3" in r.json()["error"]["message"]
        assert httpx.get(f"{base}/health").status_code == 200


def test_sigterm_lets_a_running_stream_finish_then_exits(tmp_path):
    """The real `quicksilver serve` process: SIGTERM during a stream -> the stream still ends with
    [DONE], new connections are refused, the process exits."""
    import signal
    import subprocess
    import sys

    from tests.server_harness import free_port

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "quicksilver.cli", "serve", "--model", MODEL, "--port", str(port),
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=120)
        body = {"prompt": PROMPT, "max_tokens": 48, "block_length": 8, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert json.loads(first[6:])["choices"] and rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

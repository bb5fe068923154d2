"""Structured output, tool calls and edits through the live server (real uvicorn, the bundled models,
the official ``openai`` client and raw HTTP)."""
from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import torch

import quicksilver
from quicksilver.server import ServerSettings
from tests.server_harness import live_server

torch.set_num_threads(1)

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "admin": {"type": "boolean"},
    "role": {"enum": ["dev", "ops"]}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
    "required": ["name", "age"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                          "unit": {"enum": ["c", "f"]}},
                          "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}


@pytest.fixture(scope="module", params=["coder-tiny", "coder-tiny-ar"])
def server(request):
    lm = quicksilver.load(request.param, device="cpu")
    with live_server(ServerSettings(model=request.param), backend=lm) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def test_completion_json_schema_validates(client):
    out = client.completions.create(model=client.models.list().data[0].id, prompt="user = ", max_tokens=8,
                                    extra_body={"response_format": {"type": "json_schema",
                                                                    "json_schema": {"name": "u", "schema": SCHEMA}}})
    jsonschema.validate(json.loads(out.choices[0].text), SCHEMA)


def test_chat_json_schema_and_json_object(client):
    model = client.models.list().data[0].id
    out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "a user"}],
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "u", "schema": SCHEMA}})
    jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)
    out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "any object"}],
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_tool_calls_parse_with_the_official_client(client):
    model = client.models.list().data[0].id
    for choice, tools in (("auto", [WEATHER, ADD]), ({"type": "function", "function": {"name": "add"}}, [WEATHER, ADD]),
                          ("required", [WEATHER])):
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "weather in Oslo?"}],
                                             tools=tools, tool_choice=choice)
        message = out.choices[0].message
        assert out.choices[0].finish_reason == "tool_calls" and message.content is None
        call = message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        spec = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        assert call.function.name in spec
        if isinstance(choice, dict):
            assert call.function.name == "add"
        jsonschema.validate(json.loads(call.function.arguments), spec[call.function.name])


def test_streamed_structured_output_ends_as_valid_json(server):
    body = {"prompt": "config = ", "stream": True, "diffusing": True,
            "response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": SCHEMA}}}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        frames = [f[6:] for f in "".join(r.iter_text()).split("\n\n") if f.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("body, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}}}}}, "unsupported keyword 'pattern'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "not valid JSON Schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"response_format": {"type": "json_object"}, "n": 2}, "n must be 1"),
])
def test_bad_schemas_get_a_400_naming_the_problem(server, body, words):
    r = httpx.post(f"{server}/v1/completions", json={"prompt": "x = ", **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_edits_keep_every_unselected_byte(server):
    text = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    spans = [{"start": 19, "end": 31, "max_tokens": 6}, {"start": 54, "end": 66, "max_tokens": 5}]
    r = httpx.post(f"{server}/v1/edits", json={"input": text, "spans": spans}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()["choices"][0]["text"]
    assert out.startswith(text[:19]) and out.endswith(text[66:])
    middle = text[31:54]
    assert middle in out[19:len(out) - len(text[66:])]
    r = httpx.post(f"{server}/v1/edits", json={"input": "x = <|mask:4|>\nprint(x)\n", "instruction": "set x"},
                   timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["text"].endswith("\nprint(x)\n")


@pytest.mark.parametrize("spans, words", [
    ([{"start": 5, "end": 3}], "ends before it starts"), ([{"start": 0, "end": 99}], "outside the text"),
    ([{"start": 0, "end": 4}, {"start": 2, "end": 6}], "overlap"), (None, "no spans"),
])
def test_bad_spans_get_a_400(server, spans, words):
    r = httpx.post(f"{server}/v1/edits", json={"input": "hello world", "spans": spans}, timeout=60)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_streamed_edit_sends_drafts_and_deltas_that_add_up(server):
    text = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
    body = {"input": text, "spans": [{"start": 19, "end": 31, "max_tokens": 6}], "stream": True, "diffusing": True}
    with httpx.stream("POST", f"{server}/v1/edits", json=body, timeout=120) as r:
        assert r.status_code == 200
        frames = [f[6:] for f in "".join(r.iter_text()).split("\n\n") if f.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    assert streamed.startswith(text[:19]) and streamed.endswith(text[31:])
    drafts = [c["draft"] for c in chunks if "draft" in c]
    has_drafts = bool(drafts)
    if has_drafts:
        assert any(None in d["tokens"] for d in drafts)  # a draft with the span still masked
        assert "".join(t for t in drafts[0]["tokens"] if t).startswith("def add(a, b):")
    final = httpx.post(f"{server}/v1/edits", json={**body, "stream": False}, timeout=120).json()
    assert streamed == final["choices"][0]["text"]
    assert has_drafts == (httpx.get(f"{server}/v1/models").json()["data"][0]["diffusion"])


def test_correct_is_served_without_stream(server):
    body = {"prompt": "def mean(xs):\n", "max_tokens": 8, "steps": 4, "block_length": 8, "correct": "both"}
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    r = httpx.post(f"{server}/v1/completions", json={**body, "stream": True}, timeout=60)
    diffusion = httpx.get(f"{server}/v1/models").json()["data"][0]["diffusion"]
    assert r.status_code == (400 if diffusion else 200)
    r = httpx.post(f"{server}/v1/completions", json={**body, "correct": "often"}, timeout=60)
    if diffusion:  # an AR model ignores the diffusion knobs (docs/serving.md)
        assert r.status_code == 400 and "correct must be" in r.text

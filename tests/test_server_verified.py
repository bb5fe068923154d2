"""The server with the bundled AR twin and its draft head: verified decoding is the default, streams
accepted text (identical to plain greedy AR) and, when asked, draft frames with the proposed tokens."""
from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
import torch

import quicksilver
from quicksilver.server import ServerSettings
from tests.server_harness import live_server

torch.set_num_threads(1)
MODEL = "coder-tiny-ar"
PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def lm():
    lm = quicksilver.load(MODEL, device="cpu")
    assert lm.drafter is not None, "the bundled twin ships its draft head (models/coder-tiny-ar/drafter/)"
    return lm


@pytest.fixture(scope="module")
def server(lm):
    settings = ServerSettings(max_batch=8, max_queue=8, default_max_tokens=16, max_tokens_limit=256)
    with live_server(settings, backend=lm) as base:
        yield base


def frames(base: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        text = "".join(r.iter_text())
    raw = [f for f in text.split("\n\n") if f]
    assert raw[-1] == "data: [DONE]"
    return [json.loads(f[len("data: "):]) for f in raw[:-1]]


@pytest.mark.parametrize("source", [None, "head", "head+lookup"])
def test_verified_is_the_default_and_streams_the_plain_greedy_text(server, lm, source):
    assert lm.default_policy.decoding == "verified"
    plain = lm.generate(PROMPT, max_new_tokens=40, decoding="auto")
    body = {"prompt": PROMPT, "max_tokens": 40, "stream": True, "diffusing": True}
    chunks = frames(server, body if source is None else {**body, "draft_source": source})
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == plain.text
    drafts = [c["draft"] for c in chunks if "draft" in c]
    assert drafts and all(len(d["tokens"]) == 40 for d in drafts)
    rounds = [d for d in drafts if any(t is not None for t in d.get("proposed") or [])]
    assert rounds, "each round's drafts travel in the draft frame"
    for d in rounds:
        accepted = [t for t in d["tokens"] if t is not None]
        assert d["tokens"][:len(accepted)] == accepted  # accepted tokens form a prefix of the region
    # a draft sits where it was proposed: after the text accepted before its round
    assert all(min(i for i, t in enumerate(d["proposed"]) if t is not None) >= 1 for d in rounds)
    filled = [sum(t is not None for t in d["tokens"]) for d in drafts]
    assert filled == sorted(filled)  # accepted text only grows
    assert all(c["choices"][0]["text"] == "" for c in chunks if "draft" in c)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["stats"]["generated_tokens"] == len(plain.ids[0])
    # fewer causal passes than tokens once any draft was accepted (one pass per round)
    assert finish[0]["stats"]["nfe"] <= len(plain.ids[0])


def test_plain_decoding_on_request_and_no_drafts_without_diffusing(server, lm):
    chunks = frames(server, {"prompt": PROMPT, "max_tokens": 12, "stream": True, "diffusing": True,
                             "decoding": "auto"})
    assert not any("draft" in c for c in chunks)  # an AR stream has no drafts to show
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == lm.generate(PROMPT, max_new_tokens=12, decoding="auto").text
    quiet = frames(server, {"prompt": PROMPT, "max_tokens": 12, "stream": True, "draft_length": 3})
    assert not any("draft" in c for c in quiet) and "".join(c["choices"][0]["text"] for c in quiet if c["choices"]) == text


def test_verified_requests_without_a_draft_head_or_with_bad_fields_are_400(lm):
    bare = dataclasses.replace(lm, drafter=None)
    assert bare.default_policy.decoding == "auto"
    with live_server(ServerSettings(default_max_tokens=8), backend=bare) as base:
        r = httpx.post(f"{base}/v1/completions", json={"prompt": PROMPT, "decoding": "verified"}, timeout=60)
        assert r.status_code == 400 and "draft head" in r.json()["error"]["message"]
        r = httpx.post(f"{base}/v1/completions", json={"prompt": PROMPT, "decoding": "guess"}, timeout=60)
        assert r.status_code == 400 and "decoding" in r.text
        r = httpx.post(f"{base}/v1/completions", json={"prompt": PROMPT, "draft_length": 0}, timeout=60)
        assert r.status_code == 400 and "draft_length" in r.text

"""What evaluation harnesses and other clients send to /v1/completions: every OpenAI prompt shape,
many stop sequences, echo and logprobs (the AR twin), the vLLM tokenizer routes, seeds, usage in
streams, and plain-word errors.  Against live servers: ``ar_server`` (the AR twin, in process) and
``cli_server`` (``quicksilver serve --model coder-tiny`` with an API key)."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from live_server import CLI_SERVER_KEY

PROMPT = "def fibonacci(n):"


def post(base: str, path: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(base + path, json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def diffusion(cli_server):
    return cli_server.url


def completion(base: str, body: dict, key: str | None = None) -> dict:
    r = post(base, "/v1/completions", body, key)
    assert r.status_code == 200, r.text
    return r.json()


# -- prompt shapes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["ar", "diffusion"])
def test_every_prompt_shape_gives_the_texts_of_single_requests_in_order(server, ar_server, diffusion):
    base, key = (ar_server, None) if server == "ar" else (diffusion, CLI_SERVER_KEY)
    prompts = ["import os\n", PROMPT, "class Stack:\n"]
    ids = [post(base, "/tokenize", {"prompt": p}).json()["tokens"] for p in prompts]
    single = [completion(base, {"prompt": p, "max_tokens": 6}, key)["choices"][0]["text"] for p in prompts]
    for shape in (prompts, ids):
        body = completion(base, {"prompt": shape, "max_tokens": 6, "n": 2}, key)
        choices = sorted(body["choices"], key=lambda c: c["index"])
        assert [c["index"] for c in choices] == list(range(6))
        assert [c["text"] for c in choices] == [t for t in single for _ in range(2)]  # prompt_i * n + j
        assert 0 < body["usage"]["completion_tokens"] <= 6 * 6
        assert body["usage"]["prompt_tokens"] == sum(len(row) for row in ids)
    one = completion(base, {"prompt": ids[1], "max_tokens": 6}, key)["choices"][0]["text"]
    assert one == single[1]


def test_streaming_several_prompts_with_usage(ar_server):
    body = {"prompt": ["import os\n", PROMPT], "max_tokens": 5, "stream": True, "n": 2,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{ar_server}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        frames = [f[6:] for f in "".join(r.iter_text()).split("\n\n") if f.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    whole = completion(ar_server, {"prompt": ["import os\n", PROMPT], "max_tokens": 5, "n": 2})
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == whole["usage"]["completion_tokens"] == 20
    assert usage["prompt_tokens"] == whole["usage"]["prompt_tokens"]


def test_many_stop_sequences_cut_at_the_first(ar_server):
    text = completion(ar_server, {"prompt": PROMPT, "max_tokens": 24})["choices"][0]["text"]
    assert len(text) > 4
    stop = text[3:5]
    stops = [f"never-{i}" for i in range(31)] + [stop]
    cut = completion(ar_server, {"prompt": PROMPT, "max_tokens": 24, "stop": stops})["choices"][0]
    assert cut["text"] == text[:text.find(stop)] and cut["finish_reason"] == "stop"


def test_seed_reproduces_a_sampled_completion(diffusion):
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 11}
    first = completion(diffusion, body, CLI_SERVER_KEY)["choices"][0]["text"]
    assert completion(diffusion, body, CLI_SERVER_KEY)["choices"][0]["text"] == first
    others = {completion(diffusion, {**body, "seed": s}, CLI_SERVER_KEY)["choices"][0]["text"] for s in (12, 13, 14)}
    assert others != {first}  # the seed matters, so the equality above can fail


# -- echo and logprobs -------------------------------------------------------------------------------
def test_echo_with_logprobs_is_the_exact_score_of_prompt_and_completion(ar_server, ar_lm):
    client = openai.OpenAI(base_url=f"{ar_server}/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model="coder-tiny-ar", prompt=PROMPT, max_tokens=4, echo=True, logprobs=2,
                                  temperature=0)
    choice = r.choices[0]
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    prompt_ids = ar_lm.encode(PROMPT)
    completion_ids = ar_lm.encode(choice.text[len(PROMPT):])
    ids = prompt_ids + completion_ids
    assert lp.tokens == [ar_lm.token_text(t) for t in ids]
    scores = ar_lm.score_ids(ids, 2)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(scores.token_logprobs, abs=1e-5)
    for position, top in enumerate(lp.top_logprobs[1:]):
        assert max(top.values()) == pytest.approx(scores.top_logprobs[position][0], abs=1e-5)
        assert 2 <= len(top) <= 3  # the two likeliest, and the chosen one when it is neither
    # greedy decoding chose the likeliest token at every generated position
    generated = lp.token_logprobs[len(prompt_ids):]
    assert generated == pytest.approx([max(t.values()) for t in lp.top_logprobs[len(prompt_ids):]], abs=1e-6)
    assert lp.text_offset == [len(ar_lm.decode(ids[:i])) for i in range(len(ids))]
    assert "".join(lp.tokens) == choice.text


def test_max_tokens_zero_with_echo_scores_the_prompt_alone(ar_server, ar_lm):
    ids = ar_lm.encode("import os\nimport sys\n")
    body = completion(ar_server, {"prompt": [ids, ids[:3]], "max_tokens": 0, "echo": True, "logprobs": 0})
    first, second = sorted(body["choices"], key=lambda c: c["index"])
    assert first["text"] == "import os\nimport sys\n" and second["text"] == ar_lm.decode(ids[:3])
    assert first["logprobs"]["token_logprobs"][1:] == pytest.approx(ar_lm.score_ids(ids).token_logprobs, abs=1e-5)
    assert all(len(top) == 1 for top in first["logprobs"]["top_logprobs"][1:])  # logprobs 0: the chosen token
    assert body["usage"] == {"prompt_tokens": len(ids) + 3, "completion_tokens": 0, "total_tokens": len(ids) + 3,
                             "nfe": 0}


def test_logprobs_without_echo_cover_the_completion(ar_server):
    choice = completion(ar_server, {"prompt": PROMPT, "max_tokens": 5, "logprobs": 1})["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and lp["text_offset"][0] == 0
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"])


# -- tokenizer routes ----------------------------------------------------------------------------------
def test_tokenizer_routes_round_trip_and_stay_open_with_a_key(diffusion):
    info = httpx.get(f"{diffusion}/tokenizer_info", timeout=30).json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] > 0 and info["chat_template"]
    tokens = post(diffusion, "/tokenize", {"prompt": "def f(x):\n    return x"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert post(diffusion, "/tokenize", {"prompt": info["eos_token"]}).json()["tokens"] == [0]
    assert post(diffusion, "/detokenize", {"tokens": tokens["tokens"]}).json() == {"prompt": "def f(x):\n    return x"}
    chat = post(diffusion, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 2
    bad = post(diffusion, "/detokenize", {"tokens": [10**9]})
    assert bad.status_code == 400 and "outside this model's vocabulary" in bad.json()["error"]["message"]
    assert post(diffusion, "/tokenize", {}).status_code == 400
    assert post(diffusion, "/v1/completions", {"prompt": "x"}).status_code == 401  # /v1 still needs the key


# -- errors in plain words -----------------------------------------------------------------------------
BAD = [
    ({"prompt": 42}, "'prompt' must be a string, a list of strings, a list of token ids, or a list of lists of "
                     "token ids, not a number"),
    ({"prompt": {"text": "x"}}, "not an object"),
    ({"prompt": []}, "it is an empty list"),
    ({"prompt": [1, 2.5]}, "whole numbers"),
    ({"prompt": ["x", [1, 2]]}, "mixes strings and token-id lists"),
    ({"prompt": [[1, 2], []]}, "a list that is not token ids"),
    ({"prompt": [10**7]}, "prompt holds token id 10000000, outside this model's vocabulary"),
    ({"prompt": ["x", ""]}, "prompt[1] must not be empty"),
    ({"prompt": ["x"] * 65}, "at most 64"),
    ({"prompt": "x", "stop": [f"s{i}" for i in range(33)]}, "stop takes at most 32 sequences"),
    ({"prompt": "x", "max_tokens": 0}, "0 is allowed with echo"),
    ({"prompt": "x", "logprobs": 21}, "logprobs must be between 0 and 20"),
    ({"prompt": "x", "logprobs": 1, "stream": True}, "not available when streaming"),
    ({"prompt": "x", "echo": True, "suffix": "y"}, "cannot be combined with suffix"),
    ({"prompt": "x", "stop": 42}, "'stop' must be a string or a list of strings"),
    ({"prompt": "x", "stop": [1, 2]}, "'stop' must be a string or a list of strings"),
]


@pytest.mark.parametrize("body, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_prompts_are_refused_in_plain_words(ar_server, body, words):
    r = post(ar_server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert words in message and "prompt.str" not in message, message


def test_n_above_the_cap_always_names_the_same_limit(ar_server):
    messages = {post(ar_server, "/v1/completions", {"prompt": "x", "n": n}).json()["error"]["message"].split(",")[0]
                for n in (5, 129, 10**6)}
    assert messages == {"n must be at most 4"}


def test_logprobs_of_a_diffusion_model_is_a_clear_400(diffusion):
    r = post(diffusion, "/v1/completions", {"prompt": "x", "logprobs": 1, "echo": True, "max_tokens": 1},
             CLI_SERVER_KEY)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "autoregressive" in message and "coder-tiny-ar" in message


def test_a_union_field_of_the_wrong_type_is_named_once(ar_server):
    r = post(ar_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": 42}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "'messages.0.content' must be a string or a list of content parts"
    assert r.json()["error"]["param"] == "messages.0.content"

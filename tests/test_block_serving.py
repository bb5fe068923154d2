"""A block-diffusion model served live (real uvicorn, the official ``openai`` client): the engine batches
its requests on the exact block-causal cache, streams their drafts, and takes the ordered rule."""
from __future__ import annotations

import threading

import openai
import pytest
import torch
from conftest import tiny_config

from quicksilver.api import LM
from quicksilver.model import Transformer
from quicksilver.server import ServerSettings
from tests.server_harness import live_server

PROMPTS = ["def add(a, b):", "import os\n", "class Stack:\n    def push(self, item):"]


@pytest.fixture(scope="module")
def block_lm(tiny_tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config(tiny_tokenizer, block_size=4, logits_shift=True))
    model.reset_parameters(seed=0)
    with torch.no_grad():  # peaked predictions, so that several positions clear a threshold
        model.lm_head.weight.mul_(30)
    return LM(model.eval(), tiny_tokenizer, "tiny-block")


@pytest.fixture(scope="module")
def client(block_lm):
    with live_server(ServerSettings(max_batch=8, max_queue=16, default_max_tokens=12), backend=block_lm) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("rule", [{"commit": "threshold", "threshold": 0.5}, {"commit": "ordered", "threshold": 0.5}])
def test_concurrent_requests_get_what_the_library_decodes_alone(client, block_lm, rule):
    expected = [block_lm.generate(p, max_new_tokens=12, cache="prefix", **rule).text for p in PROMPTS]
    assert all(expected)  # something to compare: the rows decode text, not an immediate end of text
    got = [None] * len(PROMPTS)

    def ask(i):
        got[i] = client.completions.create(model="tiny-block", prompt=PROMPTS[i], max_tokens=12, temperature=0,
                                           extra_body={"cache": "prefix", **rule}).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_stream_concatenates_to_the_whole(client):
    body = dict(model="tiny-block", prompt=PROMPTS[0], max_tokens=12, temperature=0,
                extra_body={"cache": "prefix", "commit": "ordered", "threshold": 0.5})
    whole = client.completions.create(**body).choices[0].text
    parts = [c.choices[0].text for c in client.completions.create(stream=True, **body) if c.choices]
    assert "".join(parts) == whole


def test_bad_rule_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-block", prompt="x", max_tokens=4, extra_body={"commit": "leftish"})
    assert "commit" in str(err.value)


def test_default_decoding_is_the_exact_cache_left_to_right(client, block_lm):
    """A request naming no decoding option gets the block model's default: its own blocks, the exact
    cache, the ordered rule at 0.9 (what the library decodes with by default)."""
    policy = block_lm.default_policy
    assert (policy.commit, policy.threshold, policy.cache, policy.block_length) == ("ordered", 0.9, "prefix", 4)
    expected = block_lm.generate(PROMPTS[2], max_new_tokens=12).text
    got = client.completions.create(model="tiny-block", prompt=PROMPTS[2], max_tokens=12, temperature=0)
    assert got.choices[0].text == expected

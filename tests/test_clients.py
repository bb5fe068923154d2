"""The clients people already use, against a live ``quicksilver serve``: litellm (completion,
text_completion, streaming, error mapping) and EleutherAI's lm-evaluation-harness (``local-completions``
and ``local-chat-completions``) on small local tasks, in its default setup (no tokenizer flags: it finds
the server's ``/tokenizer_info`` and tokenizes through ``/tokenize``) and with ``--batch_size 2``.

The diffusion server is the session's ``cli_server`` (``quicksilver serve --model coder-tiny
--api-key ...`` in a subprocess); the AR twin, which scores text for loglikelihood tasks, is served by
``ar_server`` (tests/conftest.py).  Nothing is downloaded: the task data are files in
tests/data/lm_eval and the hubs are switched offline.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from live_server import CLI_SERVER_KEY

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "lm_eval"
TASKS = ROOT / "benchmarks" / "lm_eval_tasks"
# Stops of the generate_until task: more than OpenAI's 4, and the harness adds end of text.
STOPS = ["\n\n", "\ndef", "\nclass", "\nif", "\nfor", "\n#", "\"\"\""]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Hubs offline, and litellm's price map read from the package, for the whole module."""
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "LITELLM_LOCAL_MODEL_COST_MAP",
                                            "HF_DATASETS_CACHE", "OPENAI_API_KEY")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True",
                      HF_DATASETS_CACHE=str(tmp_path_factory.mktemp("hf-datasets")))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- lm-evaluation-harness ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """The task files docs/clients.md uses (benchmarks/lm_eval_tasks), with their data paths made
    absolute: generate_until (cut at STOPS) and multiple_choice."""
    import yaml

    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    for source in sorted(TASKS.glob("*.yaml")):
        config = yaml.safe_load(source.read_text())
        files = config["dataset_kwargs"]["data_files"]
        files["test"] = str(ROOT / files["test"])
        (folder / source.name).write_text(yaml.safe_dump(config))
    assert yaml.safe_load((TASKS / "qs_complete.yaml").read_text())["generation_kwargs"]["until"] == STOPS
    return folder


def run_lm_eval(tasks: Path, task: str, model: str, model_args: dict, batch_size: int = 1, chat: bool = False) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # Only our task folder: indexing the harness's thousands of built-in task files costs half a minute.
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return simple_evaluate(model=model, model_args=model_args, tasks=[task], batch_size=batch_size,
                           task_manager=manager, log_samples=True,
                           apply_chat_template=chat, bootstrap_iters=0)


def cut_at(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i != -1), default=len(text))
    return text[:cut]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_lm_eval_generate_until_is_cut_at_its_stops(offline, tasks, cli_server, monkeypatch, batch_size):
    """Default setup: the harness probes /tokenizer_info, tokenizes through /tokenize and sends token-id
    prompts (two per request at --batch_size 2) with its seven stops plus end of text; the answers are
    the server's own greedy completions cut at the first stop."""
    monkeypatch.setenv("OPENAI_API_KEY", CLI_SERVER_KEY)
    out = run_lm_eval(tasks, "qs_complete", "local-completions",
                      {"base_url": f"{cli_server.url}/v1/completions", "model": "coder-tiny", "max_retries": 1},
                      batch_size=batch_size)
    samples = out["samples"]["qs_complete"]
    docs = [json.loads(line) for line in (DATA / "qs_complete.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs)
    cut_somewhere = False
    for sample in samples:
        answer = sample["resps"][0][0]
        prompt = docs[sample["doc_id"]]["prompt"]
        uncut = cli_server.post("/v1/completions", {"model": "coder-tiny", "prompt": prompt, "max_tokens": 24,
                                                    "temperature": 0})["choices"][0]["text"]
        assert not any(s in answer for s in STOPS), answer
        assert answer == cut_at(uncut, STOPS)
        cut_somewhere |= answer != uncut
    assert cut_somewhere  # the stops really cut something, so the check above can fail
    assert "exact_match,none" in out["results"]["qs_complete"]


def test_lm_eval_loglikelihood_on_the_ar_twin_is_its_exact_score(offline, tasks, ar_server, ar_lm):
    """multiple_choice sends echo + logprobs + max_tokens 1 for context + continuation (token ids, two
    per request at --batch_size 2); every loglikelihood it reads equals the twin's own exact score of
    that continuation."""
    batch_size = 2
    out = run_lm_eval(tasks, "qs_choice", "local-completions",
                      {"base_url": f"{ar_server}/v1/completions", "model": "coder-tiny-ar", "max_retries": 1},
                      batch_size=batch_size)
    samples = out["samples"]["qs_choice"]
    docs = [json.loads(line) for line in (DATA / "qs_choice.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs)
    for sample in samples:
        doc = docs[sample["doc_id"]]
        for (loglikelihood, is_greedy), choice in zip((r[0] for r in sample["resps"]), doc["choices"]):
            whole = ar_lm.encode(doc["context"] + choice)
            context = ar_lm.encode(doc["context"])
            scores = ar_lm.score_ids(whole, 1)
            expected = sum(scores.token_logprobs[len(context) - 1:])
            assert abs(float(loglikelihood) - expected) < 1e-4, (doc, choice)
            greedy = all(t == top[0] for t, top in zip(whole[len(context):], scores.top_ids[len(context) - 1:]))
            assert bool(is_greedy) == greedy
    assert "acc,none" in out["results"]["qs_choice"]


def test_lm_eval_chat_completions_generate(offline, tasks, cli_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CLI_SERVER_KEY)
    out = run_lm_eval(tasks, "qs_complete", "local-chat-completions",
                      {"base_url": f"{cli_server.url}/v1/chat/completions", "model": "coder-tiny", "max_retries": 1},
                      chat=True)
    samples = out["samples"]["qs_complete"]
    assert len(samples) == 4
    for sample in samples:
        answer = sample["resps"][0][0]
        # The harness's chat client sends only the first four stops (OpenAI's old limit), by itself.
        assert isinstance(answer, str) and answer and not any(s in answer for s in STOPS[:4])


def test_the_harness_picks_the_remote_tokenizer_by_itself(offline, cli_server):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(base_url=f"{cli_server.url}/v1/completions", model="coder-tiny")
    assert lm.tokenizer_backend == "remote"
    assert lm.eos_string == "<|endoftext|>"
    ids = lm.tok_encode("def f(x):")
    assert lm.decode_batch([ids]) == ["def f(x):"]


# -- litellm --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def litellm(offline):
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def test_litellm_text_completion_streams_the_same_text(litellm, cli_server):
    args = dict(model="text-completion-openai/coder-tiny", prompt="def add(a, b):", max_tokens=12, temperature=0,
                api_base=f"{cli_server.url}/v1", api_key=CLI_SERVER_KEY, num_retries=0)
    whole = litellm.text_completion(**args)
    text = whole.choices[0].text
    pieces = [chunk.choices[0].text or "" for chunk in litellm.text_completion(stream=True, **args) if chunk.choices]
    assert text and "".join(pieces) == text
    assert whole.usage.completion_tokens >= 1


def test_litellm_chat_completion_streams_the_same_text(litellm, cli_server):
    args = dict(model="openai/coder-tiny", messages=[{"role": "user", "content": "Write a function that adds."}],
                max_tokens=12, temperature=0, api_base=f"{cli_server.url}/v1", api_key=CLI_SERVER_KEY, num_retries=0)
    whole = litellm.completion(**args)
    text = whole.choices[0].message.content
    pieces = [chunk.choices[0].delta.content or "" for chunk in litellm.completion(stream=True, **args)
              if chunk.choices]
    assert text and "".join(pieces) == text


def test_litellm_maps_the_servers_errors(litellm, cli_server):
    base = dict(api_base=f"{cli_server.url}/v1", num_retries=0, max_tokens=4)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(model="openai/coder-tiny", messages=messages, api_key="wrong-key", **base)
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="openai/no-such-model", messages=messages, api_key=CLI_SERVER_KEY, **base)
    with pytest.raises(litellm.BadRequestError) as bad:
        litellm.text_completion(model="text-completion-openai/coder-tiny", prompt="x", temperature=7,
                                api_key=CLI_SERVER_KEY, **base)
    assert "temperature" in str(bad.value)
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.text_completion(model="text-completion-openai/coder-tiny", prompt="x = 1\n" * 2000,
                                api_key=CLI_SERVER_KEY, **base)

"""Schemathesis fuzzing of the live server's /openapi.json (as vLLM runs it): no request it generates,
valid or invalid by the schema, may get a 5xx.  Bounded: a few examples per operation, tiny outputs."""
from __future__ import annotations

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

import quicksilver
from quicksilver.server import ServerSettings
from tests.server_harness import live_server

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def api_schema():
    lm = quicksilver.load("coder-tiny", device="cpu")
    # Outputs of at most 4 tokens and a 5 s time limit keep every generated request cheap.
    with live_server(ServerSettings(max_tokens_limit=4, default_max_tokens=4, time_limit_s=5.0), backend=lm) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        yield schema


# Schemathesis' own pytest plugin does not run under pytest 9 here, so its Python API drives hypothesis.
def test_no_generated_request_gets_a_server_error(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health")}
    calls = []
    for operation in operations:
        post = operation.method.upper() == "POST"
        # Negative data needs something to break: routes without a body or parameters get positive only.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if post else (GenerationMode.POSITIVE,):
            examples = 12 if post else 2

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def fuzz(case):
                response = case.call(timeout=30)
                calls.append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, case.body, response.status_code,
                                                     response.text[:300])
                if response.status_code >= 400 and case.path.startswith("/v1"):
                    error = response.json()["error"]  # every refusal in the OpenAI shape, with a message
                    assert error["message"] and set(error) == {"message", "type", "param", "code"}

            fuzz()
    print("status codes of fuzzed requests:", {c: calls.count(c) for c in sorted(set(calls))})
    assert len(calls) >= 30 and any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)

"""Shared fixtures: a tiny corpus, tokenizer and dataset built once per session from real files."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

from quicksilver.config import ModelConfig
from quicksilver.data import build_dataset, folder_source
from quicksilver.model import Transformer
from quicksilver.tokenizer import Tokenizer

torch.set_num_threads(1)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session", autouse=True)
def sandbox_boundary_or_note():
    """Without bubblewrap (no root to install it, user namespaces disabled) the sandbox refuses to run
    generated code.  The tests' programs are our own, so they run on the inner layers then; the
    hostile-program suite (tests/test_sandbox_hostile.py) skips and says why.  `make test` installs
    bubblewrap where it can (`make sandbox`)."""
    import os

    from quicksilver.eval.boundary import OPT_OUT_ENV, OPT_OUT_VALUE, boundary_problem

    problem = boundary_problem()
    if problem is None or os.environ.get(OPT_OUT_ENV):
        yield
        return
    print(f"\nnote: {problem}; the tests run sandboxed programs without the boundary")
    os.environ[OPT_OUT_ENV] = OPT_OUT_VALUE
    try:
        yield
    finally:
        os.environ.pop(OPT_OUT_ENV, None)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A dataset from the stdlib's json and email packages with a 512-token vocabulary."""
    corpus = tmp_path_factory.mktemp("corpus")
    for pkg in ("json", "email", "logging"):
        for f in sorted((STDLIB / pkg).glob("*.py")):
            target = corpus / pkg / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.read_text())
    out = tmp_path_factory.mktemp("dataset")
    build_dataset(folder_source(corpus), out, vocab_size=512, val_percent=20.0)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dataset) -> Tokenizer:
    return Tokenizer.from_file(tiny_dataset / "tokenizer.json")


def tiny_config(tokenizer: Tokenizer | None = None, **overrides) -> ModelConfig:
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if tokenizer is not None:
        base.update(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, eos_token_id=tokenizer.eos_id,
                    pad_token_id=tokenizer.pad_id, fim_prefix_id=tokenizer.fim_prefix_id,
                    fim_suffix_id=tokenizer.fim_suffix_id, fim_middle_id=tokenizer.fim_middle_id)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    model = Transformer(tiny_config(**overrides))
    model.reset_parameters(seed=seed)
    return model.eval()


@pytest.fixture(scope="session")
def cli_server(tmp_path_factory):
    """``quicksilver serve --model coder-tiny --api-key ...`` as a subprocess (tests/live_server.py),
    started once for the playground and load-benchmark tests."""
    from live_server import CLI_SERVER_KEY, live_server

    with live_server(tmp_path_factory.mktemp("cli-server"), api_key=CLI_SERVER_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def ar_lm():
    """The bundled AR twin, loaded once for every test that needs it."""
    import quicksilver

    return quicksilver.load("coder-tiny-ar", device="cpu", threads=1)


@pytest.fixture(scope="session")
def ar_server(ar_lm):
    """A live server of the AR twin (in-process uvicorn, tests/server_harness.py), shared by the client
    tests that need exact log-probabilities (echo, logprobs, loglikelihood tasks)."""
    from server_harness import live_server as harness_server

    from quicksilver.server import ServerSettings

    with harness_server(ServerSettings(model="coder-tiny-ar", default_max_tokens=16), backend=ar_lm) as base:
        yield base

"""DiffusionGemma behind the Backend interface: transformers' own model and generate(), streamed
drafts as StepEvents.  The model is a tiny random one built from a small config (no download)."""
import pytest
import torch

from quicksilver.api import load_backend
from quicksilver.backend import Backend
from quicksilver.loading.checkpoint import CheckpointError, load_model
from quicksilver.loading.families.diffusion_gemma import NO_TOKEN, DiffusionGemmaBackend
from quicksilver.sampling import GenerationError
from tests.dg_tiny import make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("diffusion_gemma"))


@pytest.fixture(scope="module")
def backend(folder):
    return load_backend(folder, device="cpu")


def run(backend, seed, max_new_tokens=24, steps=4):
    events = []
    policy = backend.default_policy
    policy = type(policy)(**{**policy.__dict__, "max_new_tokens": max_new_tokens, "steps": steps, "seed": seed})
    result = backend.generate_ids([backend.encode("def add(a, b):")], policy, on_step=events.append)
    return result, events


def test_a_folder_loads_as_a_backend_by_its_model_type(backend, folder):
    assert isinstance(backend, DiffusionGemmaBackend) and isinstance(backend, Backend)
    assert backend.is_diffusion and backend.mask_id == NO_TOKEN and backend.canvas_length == 16
    assert backend.default_policy.commit == "entropy" and backend.default_policy.entropy_bound == 0.1
    assert backend.eos_ids == [1] and backend.context_length == 512
    with pytest.raises(CheckpointError, match="load_backend"):
        load_model(folder)


def test_streamed_generation_gives_drafts_and_a_final_result(backend):
    result, events = run(backend, seed=0)
    # Draft events (a step of the sampler: some positions of the current canvas accepted) and, after
    # each canvas, one event that commits the whole canvas.
    drafts = [e for e in events if int(e.committed.sum()) < 16]
    assert len(drafts) >= 4 and result.nfe == 8  # 2 canvases x 4 steps (random weights never stop early)
    assert result.nfe == max(e.step for e in events)
    for e in events:
        assert e.canvas.shape == e.committed.shape == (1, 24) and e.mask_id == NO_TOKEN
        shown = e.canvas != NO_TOKEN
        assert bool((shown | ~e.committed).all())  # every committed position shows a token
    # Random weights: about one position is accepted per step (entropy ~ ln 512 >> gamma).
    first = events[0]
    assert int(first.committed.sum()) >= 1 and int((first.canvas != NO_TOKEN).sum()) < 16
    # The second canvas starts only after the first is final.
    assert any(bool((e.canvas[0, :16] != NO_TOKEN).all()) for e in events)
    assert len(result.ids) == 1 and len(result.ids[0]) <= 24 and result.texts[0] == backend.decode(result.ids[0])
    final = events[-1].canvas[0, :len(result.ids[0])].tolist()
    assert final == result.ids[0]


def test_a_seed_makes_generation_reproducible(backend):
    a, events_a = run(backend, seed=7)
    b, events_b = run(backend, seed=7)
    c, _ = run(backend, seed=8)
    assert a.ids == b.ids and a.nfe == b.nfe
    assert all(torch.equal(x.canvas, y.canvas) for x, y in zip(events_a, events_b))
    assert c.ids != a.ids


def test_chat_template_and_refused_options(backend):
    text = backend.render_chat([{"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert backend.encode(text)[0] == 2 and backend.encode("x")[0] == 2  # add_bos_token, never twice
    base = backend.default_policy
    for bad in (dict(top_p=0.9), dict(commit="threshold"), dict(top_k=5)):
        policy = type(base)(**{**base.__dict__, **bad})
        with pytest.raises(GenerationError):
            backend.generate_ids([[2, 5]], policy)
    with pytest.raises(GenerationError, match="cannot fill"):
        backend.infill_ids([2, 5], [6], base)


def test_generate_command_streams_a_diffusion_gemma_folder(folder):
    from typer.testing import CliRunner

    from quicksilver.cli import app
    out = CliRunner().invoke(app, ["generate", "def f(x):", "--model", str(folder), "--max-new-tokens", "16",
                                   "--steps", "3", "--seed", "0", "--no-live"])
    assert out.exit_code == 0, out.output
    assert "(diffusion): " in out.output and "3 forward passes" in out.output
    bad = CliRunner().invoke(app, ["generate", "x", "--model", str(folder), "--top-p", "0.5"])
    assert bad.exit_code == 2 and "no top_k/top_p" in bad.output


def test_the_python_api_loads_it_as_its_backend(folder):
    from quicksilver import load
    backend = load(folder, device="cpu")
    assert isinstance(backend, DiffusionGemmaBackend) and backend.name == str(folder)

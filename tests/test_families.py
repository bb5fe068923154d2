"""LLaDA and Dream checkpoints on Quicksilver's model code, checked against their original
implementations' outputs (tests/data/*_tiny, made by the reference remote code; see their READMEs)."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quicksilver.backend import Backend
from quicksilver.loading.checkpoint import CheckpointError, load_model
from quicksilver.loading.families import family_of
from quicksilver.api import LM
from quicksilver.model import KVCache
from quicksilver.sampling import DecodePolicy, GenerationError, generate, preset_policy
from quicksilver.sampling.batch import left_pad
from quicksilver.sampling.diffusion import ContextCache

DATA = Path(__file__).parent / "data"
LLADA, DREAM = DATA / "llada_tiny", DATA / "dream_tiny"
ATOL = 1e-5


@pytest.fixture(scope="module")
def llada():
    return load_model(LLADA, dtype=torch.float32, progress=False)


@pytest.fixture(scope="module")
def dream():
    return load_model(DREAM, dtype=torch.float32, progress=False)


def vectors(folder):
    return load_file(str(folder / "vectors.safetensors"))


# -- the forward pass matches the reference implementations ---------------------------------------
def test_llada_logits_and_hidden_states_match_the_reference(llada):
    model, _ = llada
    v = vectors(LLADA)
    assert model.config.family == "llada" and not model.config.logits_shift and not model.config.causal
    with torch.no_grad():
        hidden = model.hidden_states(v["input_ids"])
        logits = model.head(hidden)
    torch.testing.assert_close(hidden, v["hidden_states_2"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, v["logits"], atol=ATOL, rtol=0)


def test_llada_padded_logits_match_the_reference(llada):
    """Row 0 left-padded, row 1 right-padded; positions 0..T-1 as in the reference.  Pad positions
    are computed differently (their outputs are never used), so only real positions are compared."""
    model, _ = llada
    v = vectors(LLADA)
    with torch.no_grad():
        logits = model(v["input_ids_padded"], attention_mask=v["attention_mask"])
    real = v["attention_mask"].bool()
    torch.testing.assert_close(logits[real], v["logits_padded"][real], atol=ATOL, rtol=0)
    # The mask matters: ignoring it moves the real positions' logits.
    with torch.no_grad():
        unmasked = model(v["input_ids_padded"])
    assert (unmasked[real] - v["logits_padded"][real]).abs().max() > 1e-2


def test_dream_raw_logits_match_the_reference(dream):
    """Dream's forward is compared unshifted; the samplers do the shift."""
    model, _ = dream
    v = vectors(DREAM)
    assert model.config.logits_shift and model.config.attention_bias and model.config.num_key_value_heads == 2
    with torch.no_grad():
        hidden = model.hidden_states(v["input_ids"])
        logits = model.head(hidden)
    torch.testing.assert_close(hidden, v["hidden_states_2"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, v["logits"], atol=ATOL, rtol=0)


def test_dream_padded_logits_match_the_reference(dream):
    model, _ = dream
    v = vectors(DREAM)
    mask = v["attention_mask"]
    with torch.no_grad():
        logits = model(v["input_ids_padded"], positions=v["position_ids_padded"], attention_mask=mask)
        ours = model(v["input_ids_padded"], positions=(mask.cumsum(1) - 1).clamp(min=0), attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(logits[real], v["logits_padded"][real], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[real], v["logits_padded"][real], atol=ATOL, rtol=0)  # the sampler's positions


def test_bf16_load_casts_on_the_way_in(llada):
    model, _ = load_model(LLADA, dtype=torch.bfloat16, progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.rope_fp32  # LLaDA's rope_full_precision: rotary in float32 under bf16
    v = vectors(LLADA)
    with torch.no_grad():
        logits = model(v["input_ids"]).float()
    assert (logits - v["logits"]).abs().max() < 0.05  # bf16 rounding only


def test_loading_shows_a_progress_bar_on_request(capfd):
    load_model(DREAM, dtype=torch.float32, progress=True)
    assert "tensors" in capfd.readouterr().err


# -- special ids, tokenizer and chat templates ----------------------------------------------------
def test_special_ids_and_end_of_turn_come_from_the_checkpoint(llada, dream):
    (lm, lt), (dm, dt) = llada, dream
    assert (lm.config.mask_token_id, lm.config.eos_token_id, lm.config.pad_token_id) == (126, 127, 127)
    assert lm.config.stop_token_ids == [lt.hf.token_to_id("<|eot_id|>")]
    assert dm.config.stop_token_ids == [dt.hf.token_to_id("<|im_end|>")]
    assert lm.config.fim_prefix_id == -1  # no infilling tokens: nothing extra is banned from sampling
    assert lt.decode(lt.encode("def f(x):\n  return x")) == "def f(x):\n  return x"


def test_llada_chat_template_always_ends_with_the_assistant_header(llada):
    model, tok = llada
    backend = LM(model, tok, "llada")
    text = backend.render_chat([{"role": "user", "content": "  Hi  "}])
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=False).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = backend.encode(text)
    assert ids[0] == tok.hf.token_to_id("<|startoftext|>") and ids.count(tok.hf.token_to_id("<|eot_id|>")) == 1


def test_dream_chat_template_is_chatml_with_a_default_system_prompt(dream):
    model, tok = dream
    text = LM(model, tok, "dream").render_chat([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    own = tok.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>")


@pytest.mark.parametrize("which", ["llada", "dream"])
def test_end_of_turn_stops_generation_like_end_of_text(which, request):
    model, tok = request.getfixturevalue(which)
    eot = model.config.stop_token_ids[0]
    head = model.head
    bias = torch.zeros(model.config.vocab_size)
    bias[eot] = 50.0  # the model is sure every position ends the turn
    model.head = lambda h: head(h) + bias
    try:
        result = generate(model, [tok.encode("Hi")], DecodePolicy(max_new_tokens=16, block_length=8))
    finally:
        del model.head
    assert result.finished == [True] and result.ids == [[]] and result.nfe == 8  # stopped after the first block


# -- shifted logits in the sampler ----------------------------------------------------------------
def test_dream_sampler_reads_each_position_from_the_one_before(dream):
    model, _ = dream
    prompt = [5, 17, 33, 60, 2, 9]
    seen = []
    generate(model, [prompt], DecodePolicy(max_new_tokens=8, block_length=8, stop_at_eos=False),
             on_step=lambda e: seen.append(e.canvas[0].clone()))
    canvas = torch.tensor([prompt + [model.config.mask_token_id] * 8])
    with torch.no_grad():
        logits = model(canvas)[0].float()
    logits[:, [model.config.mask_token_id]] = float("-inf")
    shifted = logits[len(prompt) - 1:-1]  # prediction for position j from j - 1
    probs = shifted.softmax(-1)
    best = int(probs.max(-1).values.argmax())
    first = seen[0]
    assert int((first != model.config.mask_token_id).sum()) == 1
    assert int(first[best]) == int(shifted[best].argmax())
    unshifted = logits[len(prompt):]
    assert int(unshifted.softmax(-1).max(-1).values.argmax()) != best or \
        int(unshifted[best].argmax()) != int(first[best])  # the unshifted reading would differ here


PROMPTS = [[10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34]]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_dream_cached_step_gives_the_shifted_logits_of_the_full_pass(dream, mode):
    """Against a cache, the queries start one position before the block, and their outputs equal the
    full pass's outputs at positions lo-1 .. hi-2 (the predictions for the block), padded rows included."""
    model, _ = dream
    cfg = model.config
    canvas, attention, positions, width = left_pad(PROMPTS, cfg.pad_token_id, 16, cfg.mask_token_id)
    canvas[:, width:width + 3] = torch.tensor([40, 41, 42])
    lo, hi = width, width + 8
    q_lo = lo - 1
    full = KVCache(cfg.num_hidden_layers)
    with torch.no_grad():
        reference = model(canvas, positions=positions, attention_mask=attention, cache=full)[:, q_lo:hi - 1]
        ctx = ContextCache.from_full(full, attention, q_lo, hi, mode)
        q_hi = canvas.shape[1] if mode == "prefix" else hi
        logits = model(canvas[:, q_lo:q_hi], positions=positions[:, q_lo:q_hi], cache=ctx)[:, :hi - lo]
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)


def _one_layer(model):
    """The reference model cut to its first layer: keys/values then depend only on each token and its
    position, so a cache cannot go stale and cached decoding must equal uncached decoding exactly."""
    clone = type(model)(dataclasses.replace(model.config, num_hidden_layers=1))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.1.")}
    clone.load_state_dict(state)
    return clone.eval()


@pytest.mark.parametrize("which", ["llada", "dream"])
def test_first_step_is_the_same_for_every_cache_mode(which, request):
    model, _ = request.getfixturevalue(which)
    first = {}
    for mode in ("none", "prefix", "dual"):
        seen = []
        generate(model, PROMPTS, DecodePolicy(max_new_tokens=16, block_length=8, cache=mode, stop_at_eos=False),
                 on_step=lambda e: seen.append(e.canvas.clone()))
        first[mode] = seen[0]
    assert torch.equal(first["none"], first["prefix"]) and torch.equal(first["none"], first["dual"])


@pytest.mark.parametrize("which", ["llada", "dream"])
@pytest.mark.parametrize("mode,refresh", [("prefix", "full"), ("dual", "full"), ("prefix", "incremental"),
                                          ("dual", "incremental")])
def test_cached_decoding_equals_uncached_when_the_cache_is_exact(which, mode, refresh, request):
    model = _one_layer(request.getfixturevalue(which)[0])
    common = dict(max_new_tokens=24, block_length=8, stop_at_eos=False)
    base = generate(model, PROMPTS, DecodePolicy(**common), keep_history=True)
    cached = generate(model, PROMPTS, DecodePolicy(cache=mode, refresh=refresh, **common), keep_history=True)
    assert cached.ids == base.ids and cached.nfe == base.nfe
    assert all(torch.equal(a, b) for a, b in zip(base.history, cached.history))


def test_dream_prefix_cache_on_the_first_block_gives_the_uncached_output(dream):
    model = _one_layer(dream[0])
    policy = dict(max_new_tokens=8, block_length=8, stop_at_eos=False)
    assert (generate(model, PROMPTS, DecodePolicy(cache="prefix", **policy)).ids
            == generate(model, PROMPTS, DecodePolicy(**policy)).ids)


@pytest.mark.parametrize("which", ["llada", "dream"])
@pytest.mark.parametrize("cache,refresh,commit", [("none", "full", "fixed"), ("prefix", "full", "fixed"),
                                                  ("dual", "incremental", "threshold")])
def test_batch_equals_single_at_temperature_zero_with_padding(which, cache, refresh, commit, request):
    model, _ = request.getfixturevalue(which)
    policy = DecodePolicy(max_new_tokens=16, block_length=8, cache=cache, refresh=refresh, commit=commit,
                          threshold=0.02, stop_at_eos=False)
    assert generate(model, PROMPTS, policy).ids == [generate(model, [p], policy).ids[0] for p in PROMPTS]


def test_dream_infilling_reads_shifted_logits_like_the_sampler(dream):
    """With an empty suffix, infilling is completion: both decoders must agree on Dream."""
    from quicksilver.sampling import Canvas, fill
    model, tok = dream
    policy = DecodePolicy(max_new_tokens=12, block_length=6, stop_at_eos=False)
    completion = generate(model, [PROMPTS[0]], policy).ids[0]
    filled = fill(model, [Canvas.infill(PROMPTS[0], 12, [])], policy)
    assert filled.ids[0] == completion and filled.forwards == [12]
    backend = LM(model, tok, "dream")
    filled = backend.infill_ids(PROMPTS[0], [40, 41], DecodePolicy(max_new_tokens=6, block_length=6))
    assert filled.nfe == 6 and len(filled.ids[0]) <= 6


# -- presets --------------------------------------------------------------------------------------
def test_presets_are_reference_orderings_that_take_overrides():
    llada = preset_policy("llada")
    assert (llada.max_new_tokens, llada.steps, llada.block_length, llada.score) == (128, 128, 32, "probability")
    dream = preset_policy("dream-entropy", max_new_tokens=24, cache="dual")
    assert dream.block_length == 24 and dream.score == "entropy" and dream.score_tempered and dream.cache == "dual"
    assert dream.schedule == "dream" and llada.schedule == "linear"
    assert preset_policy("dream-margin").score == "margin"
    assert preset_policy("dream-maskgit-plus").score == "probability"
    with pytest.raises(GenerationError, match="unknown preset"):
        preset_policy("mercury")


def test_dream_presets_decode_reproducibly_with_a_seed(dream):
    model, tok = dream
    backend = LM(model, tok, "dream")
    assert backend.default_policy.score == "entropy"
    assert isinstance(backend, Backend)
    ids = [backend.encode("Hi")]
    for name in ("dream-entropy", "dream-margin", "dream-maskgit-plus"):
        policy = preset_policy(name, max_new_tokens=12, seed=3, stop_at_eos=False)
        a, b = backend.generate_ids(ids, policy), backend.generate_ids(ids, policy)
        assert a.ids == b.ids and len(a.ids[0]) == 12 and a.nfe == 12


def test_dream_schedule_follows_its_time_grid():
    from quicksilver.sampling import rules
    # 4 masked, 2 steps: grid 1, 0.5005, 0.001 -> floor(4 * (1 - 0.5005)) = 1, then the other 3.
    assert rules.dream_transfer_counts(torch.tensor([4]), 0, 2).tolist() == [1]
    assert rules.dream_transfer_counts(torch.tensor([3]), 1, 2).tolist() == [3]
    # One step per token: floor(N * 0.999 / N) = 0 at first, then about one per step.
    assert rules.dream_transfer_counts(torch.tensor([8]), 0, 8).tolist() == [0]
    assert rules.dream_transfer_counts(torch.tensor([8]), 1, 8).tolist() == [1]


def test_dream_schedule_in_the_sampler_uses_exactly_the_steps_asked(dream):
    from quicksilver.sampling import rules
    model, _ = dream
    counts = []
    policy = DecodePolicy(max_new_tokens=8, block_length=8, steps=4, schedule="dream", stop_at_eos=False)
    result = generate(model, [PROMPTS[0]], policy, on_step=lambda e: counts.append(int(e.committed.sum())))
    masked, expected = 8, []
    for step in range(4):
        expected.append(int(rules.dream_transfer_counts(torch.tensor([masked]), step, 4)))
        masked -= expected[-1]
    assert result.nfe == 4 and counts == expected and sum(counts) == 8 and len(result.ids[0]) == 8


def test_tempered_scores_change_the_order_only_when_sampling():
    """Dream ranks positions on the tempered distribution: at temperature 5 a peaked row over a wide
    vocabulary flattens below a row with two close candidates, so the commit order flips; at
    temperature 0 (greedy) ``score_tempered`` changes nothing."""
    from quicksilver.sampling.step import choose as _commit
    peaked = [4.0] + [0.0] * 9  # p(top) 0.86, tempered 0.20
    two_close = [2.0, 1.0] + [-9.0] * 8  # p(top) 0.73, tempered 0.37
    logits = torch.tensor([peaked, two_close])
    proposal = logits.argmax(-1)
    masked = torch.ones(1, 2, dtype=torch.bool)
    plain = _commit(DecodePolicy(temperature=5.0), logits, proposal, masked, 1)
    tempered = _commit(DecodePolicy(temperature=5.0, score_tempered=True), logits, proposal, masked, 1)
    greedy = _commit(DecodePolicy(score_tempered=True), logits, proposal, masked, 1)
    assert plain.tolist() == [[True, False]] and greedy.tolist() == [[True, False]]
    assert tempered.tolist() == [[False, True]]


# -- errors ---------------------------------------------------------------------------------------
def _copy(folder, tmp_path):
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    (target / "vectors.safetensors").unlink()
    return target


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    folder = _copy(LLADA, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'model.transformer.blocks.1.up_proj.weight' is missing"):
        load_model(folder, progress=False)
    state["model.transformer.blocks.1.up_proj.weight"] = torch.zeros(64, 128)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model.transformer.blocks.1.up_proj.weight' has shape \(64, 128\), "
                                              r"the config implies \(128, 64\)"):
        load_model(folder, progress=False)
    state["model.transformer.blocks.1.up_proj.weight"] = torch.zeros(128, 64)
    state["model.transformer.blocks.7.up_proj.weight"] = torch.zeros(128, 64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.transformer.blocks.7.up_proj.weight'"):
        load_model(folder, progress=False)


def test_sharded_checkpoint_with_an_index_loads_the_same(tmp_path, dream):
    folder = _copy(DREAM, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model, _ = load_model(folder, dtype=torch.float32, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), dream[0].state_dict().values()))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors listed in the index is missing"):
        load_model(folder, progress=False)


def test_unknown_families_and_unsupported_options_are_one_sentence(tmp_path):
    assert family_of({"model_type": "quicksilver"}) == "quicksilver"
    assert family_of({"model_type": "Dream"}) == "dream"
    assert family_of({"architectures": ["LLaDAModelLM"]}) == "llada"
    assert family_of({"model_type": "diffusion_gemma"}) == "diffusion_gemma"
    with pytest.raises(CheckpointError, match="model_type 'gpt2'"):
        family_of({"model_type": "gpt2"})
    folder = _copy(DREAM, tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "use_sliding_window": True}))
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps(raw))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_model(folder)


def test_hub_id_offline_says_where_to_put_the_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "quicksilver.cli", "generate", "Hi", "--model",
                          "GSAI-ML/LLaDA-8B-Instruct", "--no-live"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    message = " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    assert "huggingface-cli download GSAI-ML/LLaDA-8B-Instruct --local-dir PATH" in message
    assert "--model PATH" in message and "offline" in message


# -- the command line -----------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from quicksilver.cli import app
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("folder,preset", [(LLADA, "llada"), (DREAM, "dream-entropy"), (DREAM, "dream-margin")])
def test_generate_runs_a_family_folder_with_its_chat_template_and_a_preset(folder, preset):
    # Dream's default system prompt is 59 characters (tokens here) of the reference config's 64 positions.
    out = _cli("generate", "Hi", "--model", str(folder), "--chat", "--preset", preset, "--max-new-tokens", "4",
               "--block-length", "4", "--seed", "0", "--no-live")
    assert out.exit_code == 0, out.output
    assert f"{folder} (diffusion): " in out.output and "forward passes" in out.output


def test_generate_reports_a_bad_preset_in_one_sentence():
    out = _cli("generate", "Hi", "--model", str(LLADA), "--preset", "nope")
    assert out.exit_code == 2 and "unknown preset 'nope'" in out.output

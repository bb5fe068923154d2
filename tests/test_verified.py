"""Verified decoding (sampling/verified.py): a draft head proposes, the causal model keeps exactly
what it would write itself.  Everything in float32 on tiny models (and the bundled twin with its
shipped draft head)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_model
from quicksilver.drafter import DraftHead, DrafterSpec, load_drafter, save_drafter
from quicksilver.model import KVCache
from quicksilver.sampling import DecodePolicy, GenerationError, generate
from quicksilver.sampling.verified import VerifiedDecoder, generate_verified
from quicksilver.training.drafter import block_batch, greedy_continuations, weighted_ce

VOCAB = 32


def peaky_target(seed: int = 0):
    """A tiny causal model whose next-token distributions are far from uniform (a scaled LM head),
    so greedy choices are clear and p differs from an untrained head's q."""
    model = tiny_model(seed, causal=True, logits_shift=True, vocab_size=VOCAB)
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)
    return model


def trained_head(target, steps: int = 80, block_size: int = 6, seed: int = 0) -> DraftHead:
    """A tiny head trained a few seconds on the target's greedy continuations, so that rounds accept
    0, 1, several drafts: every acceptance path gets exercised."""
    head = DraftHead(target.config, DrafterSpec(num_layers=1, block_size=block_size, target_layers=[0, 1]))
    head.reset_parameters(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(6, VOCAB, (16, 8), generator=gen)
    pool = greedy_continuations(target, prompts, 40)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        anchors = torch.randint(7, pool.shape[1] - block_size, (16, 8), generator=gen)
        logits, tgt = block_batch(head, target, pool, anchors)
        loss, _ = weighted_ce(logits, tgt, 3.0)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return head.eval()


@pytest.fixture(scope="module")
def pair():
    target = peaky_target()
    return target, trained_head(target)


PROMPTS = [[7, 8, 9], [12, 30, 6, 6, 21, 9, 17], [25], [10, 11, 12, 13, 14], [31, 30, 29, 28, 27, 26, 25, 24, 23]]


def ar(model, prompts, n=30, **kw):
    return generate(model, prompts, DecodePolicy(max_new_tokens=n, stop_at_eos=False, **kw)).ids


def verified(model, head, prompts, n=30, k=4, **kw):
    return generate_verified(model, head, prompts, DecodePolicy(max_new_tokens=n, stop_at_eos=False,
                                                                decoding="verified", draft_length=k, **kw))


@pytest.mark.parametrize("k", [2, 5])
def test_greedy_verified_equals_greedy_ar_alone_and_in_a_left_padded_batch(pair, k):
    model, head = pair
    accepted = []
    for prompt in PROMPTS:
        result = verified(model, head, [prompt], k=k)
        assert result.ids == ar(model, [prompt]), prompt
        accepted += result.verified.accepted
    assert max(accepted) >= 2 and min(accepted) == 0  # both acceptance and rejection were exercised
    batch = verified(model, head, PROMPTS, k=k)
    assert batch.ids == ar(model, PROMPTS)
    hist = batch.verified.histogram()
    assert sum(hist) == len(batch.verified.accepted) and len(hist) == k + 1


@pytest.mark.parametrize("source", ["lookup", "head+lookup"])
def test_copied_drafts_keep_greedy_output_exact(pair, source):
    model, head = pair
    loops = PROMPTS + [[7, 8, 9, 7, 8, 9, 7, 8, 9, 7], [20, 21, 20, 21, 20]]
    result = verified(model, None if source == "lookup" else head, loops, k=5, draft_source=source)
    assert result.ids == ar(model, loops)
    assert result.verified.lookup_rounds > 0 and max(result.verified.accepted) >= 3
    if source == "lookup":
        assert result.verified.head_passes == 0
    singles = [verified(model, head, [p], k=5, draft_source=source).ids[0] for p in loops]
    assert singles == ar(model, loops)


def test_lookup_draft_copies_what_followed_the_last_match():
    from quicksilver.sampling.verified import lookup_draft
    assert lookup_draft([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3], 6) == [4, 1, 2, 3, 4, 1]  # a loop repeats
    assert lookup_draft([1, 2, 9, 1, 2], 4) == [9, 1, 2, 9]
    assert lookup_draft([5, 6, 7, 8, 9], 3) is None


def test_verified_stops_at_end_of_text_like_ar(pair):
    model, head = pair
    eos = model.config.eos_token_id
    policy = DecodePolicy(max_new_tokens=40)
    plain = generate(model, PROMPTS, policy)
    result = generate_verified(model, head, PROMPTS, DecodePolicy(max_new_tokens=40, decoding="verified", draft_length=4))
    assert result.ids == plain.ids and result.finished == plain.finished
    assert all(eos not in row for row in result.ids)


def test_draft_length_one_is_plain_ar(pair):
    model, head = pair
    result = verified(model, head, PROMPTS, k=1)
    assert result.ids == ar(model, PROMPTS)
    assert set(result.verified.accepted) <= {0, 1}
    # every round emits one or two tokens: never more causal passes than plain AR's one per token
    assert result.nfe <= 30


def _scratch_cache(model, head, ids: list[int]):
    cache = KVCache(model.config.num_hidden_layers)
    outs: list[torch.Tensor] = []
    positions = torch.arange(len(ids))[None]
    model.hidden_states(torch.tensor([ids]), positions=positions, cache=cache, layer_outputs=outs)
    return cache, head.context_kv(head.fuse_features(outs), positions)


def test_cache_after_rollback_equals_a_cache_built_from_scratch(pair):
    model, head = pair
    prompt = PROMPTS[1]
    dec = VerifiedDecoder(model, head, [prompt], DecodePolicy(max_new_tokens=60, stop_at_eos=False,
                                                               decoding="verified", draft_length=5))
    rejected = 0
    with torch.no_grad():
        for _ in range(6):
            _, accepted = dec.round()
            rejected += int(accepted[0] < 5)
            # the cache holds the prompt and every emitted token but the anchor (the last one)
            ids = prompt + dec.out[0][:-1]
            assert dec.cache.length == len(ids) == dec.context.length
            cache, context = _scratch_cache(model, head, ids)
            for layer in range(model.config.num_hidden_layers):
                torch.testing.assert_close(dec.cache.keys[layer], cache.keys[layer], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(dec.cache.values[layer], cache.values[layer], atol=1e-5, rtol=1e-4)
            for layer in range(len(head.layers)):
                torch.testing.assert_close(dec.context.keys[layer], context.keys[layer], atol=1e-5, rtol=1e-4)
    assert rejected > 0  # some rounds did roll back


def test_batch_cache_keeps_each_rows_tokens_and_masks_the_rest(pair):
    model, head = pair
    dec = VerifiedDecoder(model, head, PROMPTS[:3], DecodePolicy(max_new_tokens=60, stop_at_eos=False,
                                                                  decoding="verified", draft_length=4))
    with torch.no_grad():
        for _ in range(5):
            dec.round()
    for row, prompt in enumerate(PROMPTS[:3]):
        kept = dec.cache.attention_mask[row].bool()
        ids = prompt + dec.out[row][:-1]
        assert int(kept.sum()) == len(ids)
        cache, _ = _scratch_cache(model, head, ids)
        for layer in range(model.config.num_hidden_layers):
            torch.testing.assert_close(dec.cache.keys[layer][row][:, kept], cache.keys[layer][0], atol=1e-5, rtol=1e-4)


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% point of chi-square with ``df`` degrees of freedom (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _exact_marginals(model, prompt: list[int], policy: DecodePolicy, steps: int) -> list[torch.Tensor]:
    """Exact distributions of generated tokens 1..steps under plain AR sampling with ``policy``,
    by enumerating every prefix (the vocabulary is tiny)."""
    from quicksilver.sampling.stops import never_sample_ids
    from quicksilver.sampling.verified import _filtered

    banned = never_sample_ids(model.config)
    prefixes, weights, marginals = [prompt], torch.ones(1, dtype=torch.float64), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor(prefixes))[:, -1]
            p = (_filtered(logits, policy, banned).double() / policy.temperature).softmax(-1)
            joint = weights[:, None] * p
            marginals.append(joint.sum(0))
            keep = joint.flatten() > 1e-9
            idx = keep.nonzero().flatten()
            prefixes = [prefixes[i // VOCAB] + [i % VOCAB] for i in idx.tolist()]
            weights = joint.flatten()[idx]
    return marginals


def _chi_square(counts: torch.Tensor, expected_p: torch.Tensor, n: int) -> tuple[float, int]:
    expected = expected_p * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].sum()[None].double()])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=6),
                                     dict(temperature=1.0, draft_source="head+lookup"),
                                     dict(temperature=0.8, draft_source="lookup")])
def test_sampled_tokens_follow_the_causal_models_distribution(options):
    """4000 independent rows (one batch, one seed): tokens 2 and 3 of each row come out of the
    speculative rule (token 1 comes from the prefill).  Their histograms must pass a chi-square test
    at the 0.1% level against the exact AR marginals; the raw drafts must fail it (the test can fail)."""
    model = peaky_target(3)
    with torch.no_grad():
        model.lm_head.weight.mul_(1 / 30)  # spread p out: many tokens in play, so rejections matter
    head = DraftHead(model.config, DrafterSpec(num_layers=1, block_size=4, target_layers=[0, 1]))
    head.reset_parameters(seed=1)
    with torch.no_grad():
        head.mask_embedding.normal_(0, 1.0)
    head.eval()
    n, prompt = 4000, [7, 8, 9]
    if options.get("draft_source"):  # a prompt that repeats: rows whose first token continues it copy drafts
        prompt = [7, 8, 9, 7, 8, 9, 7, 8]
    policy = DecodePolicy(max_new_tokens=3, stop_at_eos=False, decoding="verified", draft_length=3, seed=0, **options)
    dec = VerifiedDecoder(model, head, [prompt] * n, policy)
    with torch.no_grad():
        first_drafts, _ = dec.round()  # the head's own proposals for tokens 2, 3, 4
        while not dec.finished:
            dec.round()
    ids = torch.tensor(dec.out)  # raw tokens (end of text included: no cut)
    exact = _exact_marginals(model, prompt, policy, 3)
    for position in (1, 2):
        counts = torch.bincount(ids[:, position], minlength=VOCAB)
        stat, df = _chi_square(counts, exact[position], n)
        assert stat < _chi_square_critical(df), (position, stat, df)
    drafts = torch.bincount(first_drafts[:, 0], minlength=VOCAB)
    stat, df = _chi_square(drafts, exact[1], n)
    assert stat > _chi_square_critical(df)
    assert 0 < dec.stats.mean_accepted < 3  # some drafts accepted, some rejected
    if options.get("draft_source"):
        assert 0 < dec.stats.lookup_rounds < n  # both kinds of proposal were verified


def test_saved_head_loads_back_and_drafts_the_same(pair, tmp_path):
    model, head = pair
    save_drafter(head, tmp_path / "drafter")
    assert not list((tmp_path / "drafter").glob("*.bin")) and (tmp_path / "drafter" / "model.safetensors").is_file()
    loaded = load_drafter(tmp_path / "drafter", model)
    assert verified(model, loaded, PROMPTS).ids == verified(model, head, PROMPTS).ids


def test_refusals_are_generation_errors(pair):
    model, head = pair
    with pytest.raises(GenerationError, match="draft head"):
        generate(model, [[7]], DecodePolicy(decoding="verified"))
    with pytest.raises(GenerationError, match="draft_length"):
        verified(model, head, [[7]], k=head.spec.block_size)
    with pytest.raises(GenerationError, match="decoding must be"):
        generate(model, [[7]], DecodePolicy(decoding="speculative"))
    diffusion = tiny_model(0, vocab_size=VOCAB)
    with pytest.raises(GenerationError, match="causal"):
        generate(diffusion, [[7]], DecodePolicy(decoding="verified"), drafter=head)


def test_bench_reports_verified_systems(tmp_path, tiny_tokenizer):
    """``quicksilver bench`` with verified systems on a tiny twin: identical to the twin's greedy output,
    acceptance histogram, draft/verify split, and the drafter checkpoint sweep."""
    from conftest import tiny_config
    from quicksilver.loading.checkpoint import save_pretrained
    from quicksilver.eval import bench
    from quicksilver.model import Transformer

    target = Transformer(tiny_config(tiny_tokenizer, causal=True, logits_shift=True))
    target.reset_parameters(seed=1)
    with torch.no_grad():
        target.lm_head.weight.mul_(40.0)
    target.eval()
    folder = save_pretrained(target, tiny_tokenizer, tmp_path / "ar")
    head = DraftHead(target.config, DrafterSpec(num_layers=1, block_size=5, target_layers=[0, 1]))
    save_drafter(head, folder / "drafter", extra={"step": 0, "tokens": 0})  # shipped inside the model folder
    save_drafter(head, tmp_path / "ckpt", extra={"step": 7, "tokens": 1234})
    cfg = bench.BenchConfig(ar_model=str(folder), prompts=bench.BUILTIN_PROMPTS[:3], max_new_tokens=12,
                            batch_sizes=(1, 2), repeats=1, warmup=0, dtype="fp32",
                            systems=("verified-k4", "verified-k8-lookup"),
                            hf=False, out_dir=str(tmp_path), drafter_checkpoints=(str(tmp_path / "ckpt"),),
                            interleave=True)
    result = bench.run_benchmark(cfg, log=lambda m: None)
    rows = {(r["system"], r["batch"]): r for r in result["results"]}
    assert set(rows) == {(s, b) for s in ("ar-twin", "verified-k4", "verified-k8-lookup") for b in (1, 2)}
    assert rows[("verified-k8-lookup", 1)]["identical_share"] == 1.0  # the twin comes along as the reference
    for batch in (1, 2):
        v = rows[("verified-k4", batch)]
        assert v["identical_share"] == 1.0 and len(v["accepted_histogram"]) == 5
        assert v["draft_ms_per_round"] > 0 and v["verify_ms_per_round"] > 0 and 0 <= v["accepted_mean"] <= 4
    assert rows[("verified-k4", 1)]["identical_share_fp32"] == 1.0
    t = result["verified_target"]
    assert t["identical_share"] == 1.0 and "verified-k4" in t["tokens_per_round_needed"]
    assert result["drafter_checkpoints"][0]["training_tokens"] == 1234
    from quicksilver.eval import bench_report
    assert any(line.startswith("Verified decoding") for line in bench_report.target_lines(result))
    assert "verified-k4" in bench_report.markdown_table(result)


def test_the_bundled_twin_with_its_shipped_head_writes_exactly_its_greedy_output():
    """fp32, real prompts: verified (two draft lengths, batch 1 and a left-padded batch) == plain greedy AR,
    and the trained head gets drafts accepted."""
    import quicksilver
    from quicksilver.eval.bench import BUILTIN_PROMPTS

    lm = quicksilver.load("coder-tiny-ar", device="cpu", dtype=torch.float32)
    assert lm.drafter is not None
    prompts = [lm.encode(p) for p in BUILTIN_PROMPTS[:5]]
    plain = generate(lm.model, prompts, DecodePolicy(max_new_tokens=48)).ids
    for k in (4, 8):
        policy = DecodePolicy(max_new_tokens=48, decoding="verified", draft_length=k)
        singles = [generate(lm.model, [p], policy, drafter=lm.drafter) for p in prompts]
        assert [r.ids[0] for r in singles] == plain
        assert generate(lm.model, prompts, policy, drafter=lm.drafter).ids == plain
        assert max(a for r in singles for a in r.verified.accepted) >= 2

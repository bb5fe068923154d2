"""Block diffusion (BD3-LM): the block-causal mask, the [x_t ; x_0] training layout, the loss, and
exact resume of the block_diffusion objective."""
import json
import shutil

import pytest
import torch
from conftest import tiny_config, tiny_model
from safetensors.torch import load_file

from quicksilver.config import ConfigError
from quicksilver.diffusion import block_diffusion_layout, block_diffusion_loss, block_times
from quicksilver.model import build_attention_mask
from quicksilver.training.train import load_run_config, train
from test_train import write_config


def test_block_causal_mask_sees_own_block_and_blocks_before():
    cfg = tiny_config(block_size=4)
    positions = torch.arange(13)[None, :]
    mask, is_causal = build_attention_mask(cfg, 13, 0, None, torch.device("cpu"), positions)
    assert not is_causal
    for i in range(13):
        for j in range(13):
            assert bool(mask[0, 0, i, j]) == (j // 4 <= i // 4), (i, j)
    # With cached keys (finished earlier blocks) every cached key is visible, the new ones block-causally.
    mask, _ = build_attention_mask(cfg, 8, 8, None, torch.device("cpu"), torch.arange(8, 16)[None, :])
    assert mask.shape[-2:] == (8, 16)
    assert bool(mask[0, 0, :, :8].all())
    assert bool(mask[0, 0, 0, 8:12].all()) and not bool(mask[0, 0, 0, 12:].any())


def test_block_causal_model_ignores_later_blocks_and_sees_its_own():
    torch.manual_seed(0)
    model = tiny_model(block_size=4)
    x = torch.randint(6, 500, (1, 12))
    changed = x.clone()
    changed[0, 9] = (x[0, 9] + 1) % 500 + 6  # in block 2
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)  # blocks 0 and 1 never see block 2
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-4)  # block 2 sees all of itself


def test_layout_noisy_block_sees_exactly_clean_prefix_and_itself():
    """Each noisy block's outputs in the vectorised [x_t ; x_0] pass equal a plain block-causal pass
    over [clean blocks before it | that noisy block], i.e. what the decoder computes."""
    torch.manual_seed(0)
    model = tiny_model(block_size=4)
    n, bs = 12, 4
    x0 = torch.randint(6, 500, (2, n))
    xt = x0.clone()
    xt[:, 1::3] = model.config.mask_token_id
    layout = block_diffusion_layout(n, bs)
    pos = torch.arange(n).repeat(2)[None].expand(2, 2 * n)
    with torch.no_grad():
        both = model.hidden_states(torch.cat([xt, x0], 1), positions=pos, layout=layout)
        for blk in range(n // bs):
            lo, hi = blk * bs, (blk + 1) * bs
            alone = model.hidden_states(torch.cat([x0[:, :lo], xt[:, lo:hi]], 1))
            assert torch.allclose(both[:, lo:hi], alone[:, lo:hi], atol=1e-5)
        clean = model.hidden_states(x0)
        assert torch.allclose(both[:, n:], clean, atol=1e-5)  # the clean half is the cache's view


@pytest.mark.parametrize("shift", [False, True])
def test_block_loss_decreases_on_a_tiny_model(shift):
    torch.manual_seed(0)
    model = tiny_model(block_size=4, logits_shift=shift).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0 = torch.randint(6, 60, (4, 16))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        times = block_times(4, 4, gen)
        draws = torch.rand(4, 16, generator=gen)
        out = block_diffusion_loss(model, x0, model.config.mask_token_id, 4, times, draws)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_shifted_block_loss_reads_the_first_position_from_the_clean_previous_block():
    """With the token shift a block's first token is the clean previous block's AR prediction: it does
    not depend on anything noisy."""
    torch.manual_seed(0)
    model = tiny_model(block_size=4, logits_shift=True)
    x0 = torch.randint(6, 500, (1, 8))
    times = torch.tensor([[1.0, 1.0]])
    only_first = torch.ones(1, 8)
    only_first[0, 4] = 0.0  # mask only position 4, the first of block 1
    a = block_diffusion_loss(model, x0, model.config.mask_token_id, 4, times, only_first).nll_sum
    # Position 4's prediction comes from clean position 3; masking more of block 1 cannot change it.
    draws = torch.ones(1, 8)
    draws[0, 4:] = 0.0
    maskable = torch.zeros(1, 8, dtype=torch.bool)
    maskable[0, 4] = True
    b = block_diffusion_loss(model, x0, model.config.mask_token_id, 4, times, draws, maskable=maskable).nll_sum
    assert torch.allclose(a, b)


def test_block_objective_needs_a_block_size(tmp_path, tiny_dataset):
    cfg = write_config(tmp_path, tiny_dataset, objective="block_diffusion", steps=2)
    with pytest.raises(ConfigError, match="block_size"):
        train(load_run_config(cfg), progress=False, log=lambda *_: None)


def test_block_diffusion_resume_is_exact(tmp_path, tiny_dataset):
    def config(name):
        path = write_config(tmp_path, tiny_dataset, name=name, objective="block_diffusion", steps=8,
                            save_every=4)
        text = path.read_text().replace("[train]", "block_size = 8\n\n[train]")
        path.write_text(text + "eval_time_samples = 1\n")
        return load_run_config(path)

    state = train(config("straight"), progress=False, log=lambda *_: None)
    assert state["step"] == 8
    # Resume from step 4 of a copy of the run (as if it had been killed after that checkpoint).
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000008")
    (resumed / "latest").write_text("step-0000004\n")
    train(config("resumed"), resume=True, progress=False, log=lambda *_: None)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(straight / "checkpoints" / "step-0000008" / name))
        b = load_file(str(resumed / "checkpoints" / "step-0000008" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    saved = json.loads((straight / "run_config.json").read_text())
    assert saved["model"]["block_size"] == 8 and saved["train"]["objective"] == "block_diffusion"

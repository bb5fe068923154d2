"""Certainty-forcing self-distillation on trajectories (distill.py): the trajectory file, the loss,
the training objective and its exact resume."""
import json
import shutil

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from quicksilver.config import ConfigError
from quicksilver.diffusion import block_diffusion_loss
from quicksilver.training.distill import TrajectoryDataset, make_trajectories
from quicksilver.model import Transformer
from quicksilver.sampling import DecodePolicy
from quicksilver.tokenizer import Tokenizer
from quicksilver.training.train import load_run_config, train
from test_train import write_config


@pytest.fixture(scope="module")
def trajectory_file(tiny_dataset, tmp_path_factory):
    tok = Tokenizer.from_file(tiny_dataset / "tokenizer.json")
    cfg = tiny_config(tok, block_size=8)
    model = Transformer(cfg)
    model.reset_parameters(seed=0)
    model.eval()
    out = tmp_path_factory.mktemp("traj") / "t.safetensors"
    meta = make_trajectories(model, tok, tiny_dataset, out, prompts=24, prompt_len=32, gen_len=32, batch_size=8,
                             policy=DecodePolicy(max_new_tokens=32, commit="threshold", threshold=0.5,
                                                 cache="prefix"), log=lambda *_: None)
    assert meta["prompt_len"] == 32
    return out


def test_trajectory_file_holds_prompts_and_the_models_continuations(trajectory_file, tiny_dataset):
    rows = load_file(str(trajectory_file))["tokens"]
    assert rows.shape == (24, 64)
    data = TrajectoryDataset(trajectory_file, 64, "train")
    held = TrajectoryDataset(trajectory_file, 64, "val")
    assert len(data.rows) + len(held.rows) == 24 and data.prompt_len == 32
    a, _ = data.batch(3, 4, 64, seed=1)
    b, _ = data.batch(3, 4, 64, seed=1)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="seq_len"):
        TrajectoryDataset(trajectory_file, 128, "train")


def _train_tiny(certainty):
    torch.manual_seed(0)
    from conftest import tiny_model
    model = tiny_model(block_size=4).train()
    x0 = torch.randint(6, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    times, draws = torch.full((4, 4), 0.5), torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(40):
        out = block_diffusion_loss(model, x0, model.config.mask_token_id, 4, times, draws, weighting="mean",
                                   certainty=certainty)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    with torch.no_grad():
        xt = torch.where(draws < 0.5, torch.full_like(x0, model.config.mask_token_id), x0)
        logits = model(xt).float()[draws < 0.5]
        right = logits.argmax(-1) == x0[draws < 0.5]  # where the term acts: the model is already right
        probs = logits[right].softmax(-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
    return losses, float(entropy)


def test_certainty_forcing_lowers_the_loss_and_the_entropy():
    plain_losses, plain_entropy = _train_tiny(0.0)
    forced_losses, forced_entropy = _train_tiny(2.0)
    assert forced_losses[-1] < 0.7 * forced_losses[0]
    assert forced_entropy < plain_entropy  # surer where it is right, with the certainty term


def _distill_config(tmp_path, tiny_dataset, trajectory_file, name, steps=12):
    path = write_config(tmp_path, tiny_dataset, name=name, objective="distill", steps=steps, save_every=4)
    text = path.read_text().replace("[train]", "block_size = 8\n\n[train]")
    text += f'distill_data = "{trajectory_file}"\neval_time_samples = 1\n'
    path.write_text(text)
    return load_run_config(path)


def test_distill_objective_lowers_its_loss_and_resumes_exactly(tmp_path, tiny_dataset, trajectory_file):
    state = train(_distill_config(tmp_path, tiny_dataset, trajectory_file, "straight"), progress=False,
                  log=lambda *_: None)
    vals = [h["val_loss"] for h in state["history"]]
    assert state["step"] == 12 and vals[-1] < vals[0]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000012")
    (resumed / "latest").write_text("step-0000008\n")
    train(_distill_config(tmp_path, tiny_dataset, trajectory_file, "resumed"), resume=True, progress=False,
          log=lambda *_: None)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(straight / "checkpoints" / "step-0000012" / name))
        b = load_file(str(resumed / "checkpoints" / "step-0000012" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((straight / "run_config.json").read_text())["train"]["objective"] == "distill"


def test_distill_needs_a_trajectory_file(tmp_path, tiny_dataset):
    path = write_config(tmp_path, tiny_dataset, objective="distill", steps=2)
    with pytest.raises(ConfigError, match="distill_data"):
        load_run_config(path)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_suffix_share_masks_that_share_of_blocks_from_a_cut_to_their_end(monkeypatch, share):
    """suffix_share = 1: every block of the completion is masked from some offset to its end (the states a
    left-to-right decoder visits); 0: dParallel's random masks (almost never all suffixes); in between,
    both kinds.  The prompt is never masked."""
    import quicksilver.diffusion as diffusion
    from quicksilver.config import ModelConfig
    from quicksilver.training.distill import distill_loss

    seen = []
    real = diffusion.block_masked_logits
    monkeypatch.setattr(diffusion, "block_masked_logits",
                        lambda model, x0, masked, *a: seen.append(masked.clone()) or real(model, x0, masked, *a))
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, causal=False, block_size=4,
                      logits_shift=True, mask_token_id=1, eos_token_id=0, pad_token_id=2)
    model = Transformer(cfg)
    model.reset_parameters(seed=0)
    ids = torch.randint(6, 64, (16, 32))
    distill_loss(model, ids, 8, cfg, torch.Generator().manual_seed(0), 0, 16, 0.0, suffix_share=share)
    blocks = seen[0].view(16, 8, 4)
    assert not blocks[:, :2].any()  # the 8-token prompt
    gen_blocks = blocks[:, 2:].long()
    is_suffix = (gen_blocks == gen_blocks.cummax(dim=-1).values).all(-1) & gen_blocks[..., -1].bool()
    share_seen = float(is_suffix.float().mean())
    if share == 1.0:
        assert share_seen == 1.0
    elif share == 0.0:
        assert share_seen < 0.6  # random masks are a suffix only by chance
    else:
        assert 0.5 < share_seen < 1.0

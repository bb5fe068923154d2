"""AR-to-diffusion adaptation: the diffusion model starts from its causal twin's weights."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from quicksilver.loading.checkpoint import CheckpointError, save_pretrained
from quicksilver.diffusion import diffusion_loss
from quicksilver.model import Transformer
from quicksilver.training.train import build_model, load_run_config, run_model_config, train

from tests.conftest import tiny_config

CONFIG = """
[model]
hidden_size = {hidden}
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 128
logits_shift = {shift}

[train]
data = "{data}"
out_dir = "{out}"
init_from = "{twin}"
seq_len = 64
batch_size = 4
max_steps = 2
warmup_steps = 1
eval_every = 2
eval_batches = 1
save_every = 2
threads = 1
dtype = "fp32"
"""


@pytest.fixture(scope="module")
def twin(tmp_path_factory, tiny_tokenizer):
    model = Transformer(tiny_config(tiny_tokenizer, causal=True, logits_shift=True, max_position_embeddings=128))
    model.reset_parameters(seed=1)
    folder = save_pretrained(model, tiny_tokenizer, tmp_path_factory.mktemp("twin") / "ar")
    return model.eval(), folder


def adapted_run(tmp_path, data, twin_dir, shift=True, hidden=64):
    path = tmp_path / "adapt.toml"
    path.write_text(CONFIG.format(hidden=hidden, shift=str(shift).lower(), data=data, out=tmp_path / "run",
                                  twin=twin_dir))
    return load_run_config(path)


@pytest.mark.parametrize("shift", [True, False])
def test_adapted_model_is_the_twin_with_the_causal_mask_switched_back(tmp_path, tiny_dataset, tiny_tokenizer,
                                                                      twin, shift):
    ar, folder = twin
    run = adapted_run(tmp_path, tiny_dataset, folder, shift)
    mcfg = run_model_config(run.train, run.model, tiny_tokenizer)
    model = build_model(run.train, mcfg, tiny_tokenizer, torch.device("cpu"), log=lambda *_: None).eval()
    assert not model.config.causal and model.config.logits_shift is shift
    x = torch.randint(6, tiny_tokenizer.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bidirectional = model(x)
        model.config = dataclasses.replace(model.config, causal=True)
        causal = model(x)
        expected = ar(x)
    assert torch.equal(causal, expected)
    assert not torch.allclose(bidirectional, expected)  # the attention really is bidirectional now


def test_a_twin_of_another_shape_is_refused(tmp_path, tiny_dataset, tiny_tokenizer, twin):
    run = adapted_run(tmp_path, tiny_dataset, twin[1], hidden=32)
    mcfg = run_model_config(run.train, run.model, tiny_tokenizer)
    with pytest.raises(CheckpointError, match="hidden_size = 64, but the run's model has 32"):
        build_model(run.train, mcfg, tiny_tokenizer, torch.device("cpu"))


def test_adaptation_run_starts_from_the_twin(tmp_path, tiny_dataset, twin):
    run = adapted_run(tmp_path, tiny_dataset, twin[1])
    state = train(run, progress=False, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "val_loss" in records[0]  # the starting point is measured
    assert state["step"] == 2
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["causal"] is False and saved["logits_shift"] is True


class PositionModel(nn.Module):
    """Hidden state = one-hot of the position; the head maps position p to token ``targets[p]``."""

    def __init__(self, targets: torch.Tensor, vocab: int, shift: bool) -> None:
        super().__init__()
        self.config = type("C", (), {"logits_shift": shift})()
        n = targets.numel()
        self.lm = nn.Linear(n, vocab, bias=False)
        with torch.no_grad():
            self.lm.weight.zero_()
            self.lm.weight[targets, torch.arange(n)] = 50.0

    def hidden_states(self, x, positions=None, attention_mask=None):
        return torch.eye(x.shape[1])[None].expand(x.shape[0], -1, -1)

    def head(self, h):
        return self.lm(h)


def test_shifted_logits_read_each_prediction_from_the_previous_position():
    vocab, n = 20, 8
    targets = torch.randint(6, vocab, (n,), generator=torch.Generator().manual_seed(0))
    # Position p's output names targets[p].  With the shift, token j is read from position j - 1
    # (token 0 from position 0 itself, as Dream does); without it, from position j.
    shifted_x0 = torch.cat([targets[:1], targets[:-1]])[None]
    all_masked = torch.ones(1)
    shift = diffusion_loss(PositionModel(targets, vocab, True), shifted_x0, 0, None, times=all_masked,
                           draws=torch.zeros(1, n))
    no_shift = diffusion_loss(PositionModel(targets, vocab, False), shifted_x0, 0, None, times=all_masked,
                              draws=torch.zeros(1, n))
    same = diffusion_loss(PositionModel(targets, vocab, False), targets[None], 0, None, times=all_masked,
                          draws=torch.zeros(1, n))
    assert shift.loss.item() < 1e-6 and same.loss.item() < 1e-6
    assert no_shift.loss.item() > 10

import json

import pytest
import torch

from quicksilver.config import ConfigError, ModelConfig
from quicksilver.model import KVCache
from tests.conftest import tiny_model


def test_shapes_and_parameter_count():
    model = tiny_model()
    x = torch.randint(6, 512, (3, 17))
    assert model(x).shape == (3, 17, 512)
    assert model.hidden_states(x).shape == (3, 17, 64)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_causal_logits_ignore_later_tokens():
    model = tiny_model(causal=True)
    x = torch.randint(6, 512, (1, 12))
    y = x.clone()
    y[0, 8:] = torch.randint(6, 512, (4,))
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_bidirectional_logits_see_later_tokens():
    model = tiny_model(causal=False)
    x = torch.randint(6, 512, (1, 12))
    y = x.clone()
    y[0, 11] = (x[0, 11] + 1) % 512
    assert not torch.allclose(model(x)[:, 0], model(y)[:, 0])


@pytest.mark.parametrize("causal", [False, True])
def test_left_padded_batch_matches_single_rows(causal):
    model = tiny_model(causal=causal)
    rows = [torch.randint(6, 512, (n,)) for n in (5, 9, 7)]
    width = 9
    batch = torch.full((3, width), 2)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(batch, positions=positions, attention_mask=mask)
    for i, r in enumerate(rows):
        alone = model(r[None])
        torch.testing.assert_close(out[i, width - len(r):], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_kv_cache_matches_full_forward():
    model = tiny_model(causal=True)
    x = torch.randint(6, 512, (2, 10))
    full = model(x)
    cache = KVCache(model.config.num_hidden_layers)
    first = model(x[:, :6], cache=cache)
    rest = [model(x[:, i:i + 1], cache=cache) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat([first] + rest, dim=1), full, atol=1e-5, rtol=1e-5)


def test_config_json_round_trip(tmp_path):
    cfg = ModelConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, causal=True)
    cfg.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "quicksilver" and data["causal"] is True
    assert ModelConfig.load(tmp_path / "config.json") == cfg


def test_bad_config_keys_and_values_are_rejected():
    with pytest.raises(ConfigError, match="unknown model config keys: banana"):
        ModelConfig.from_dict({"banana": 1})
    with pytest.raises(ConfigError):
        ModelConfig(hidden_size=100, num_attention_heads=3)

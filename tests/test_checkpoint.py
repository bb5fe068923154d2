import json

import pytest
import torch

from quicksilver.loading.checkpoint import CheckpointError, load_model, save_pretrained
from tests.conftest import tiny_config
from quicksilver.model import Transformer


@pytest.fixture
def saved(tmp_path, tiny_tokenizer):
    model = Transformer(tiny_config(tiny_tokenizer))
    model.reset_parameters(seed=1)
    save_pretrained(model, tiny_tokenizer, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_round_trip_is_exact(saved):
    model, folder = saved
    loaded, tok = load_model(folder)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randint(6, 500, (1, 9))
    torch.testing.assert_close(model.eval()(x), loaded(x))


def test_sharded_bf16_round_trip(saved, tmp_path):
    model, folder = saved
    loaded, tok = load_model(folder)
    save_pretrained(loaded, tok, tmp_path / "sharded", dtype=torch.bfloat16, max_shard_bytes=50_000)
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    again, _ = load_model(tmp_path / "sharded")
    assert next(again.parameters()).dtype == torch.bfloat16
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a.to(torch.bfloat16), b)


def test_truncated_safetensors_is_one_clear_error(saved):
    _, folder = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(folder)


def test_missing_and_misshaped_tensors_are_named(saved):
    from safetensors.torch import load_file, save_file
    _, folder = saved
    state = load_file(str(folder / "model.safetensors"))
    del state["layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'layers.1.mlp.up_proj.weight' is missing"):
        load_model(folder)
    state["layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'layers.1.mlp.up_proj.weight' has shape \(3, 3\)"):
        load_model(folder)


def test_not_a_checkpoint_and_unknown_names(tmp_path, saved):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    _, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    cfg["flux_capacitor"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="flux_capacitor"):
        load_model(folder)


def test_pickle_files_are_never_loaded(tmp_path, saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="never loaded"):
        load_model(folder)

import numpy as np
import pytest
import torch

from quicksilver.data import ShardDataset, build_dataset, folder_source, split_of
from quicksilver.data.shards import DatasetError
from quicksilver.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError


def test_special_tokens_have_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = {tok.eos_id, tok.mask_id, tok.pad_id, tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id}
    assert len(ids) == len(SPECIAL_TOKENS)
    # A special token's text in the corpus is not split into the special id.
    assert tok.encode("x = 1\n") and tok.mask_id not in tok.encode("def f(): pass")


def test_round_trip_and_decode_never_raises(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "def f(x):\n    return x + 'é' * 2\n"
    assert tok.decode(tok.encode(text)) == text
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(-5, tok.vocab_size + 50, size=rng.integers(0, 20)).tolist()
        assert isinstance(tok.decode(ids), str)
    # A lone UTF-8 continuation byte decodes to a replacement character, not an exception.
    assert isinstance(tok.decode(tok.encode("é")[:1]), str)


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        Tokenizer.from_file(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer"):
        Tokenizer.from_file(bad)


def test_split_is_deterministic_and_roughly_sized():
    paths = [f"pkg/module_{i}.py" for i in range(2000)]
    splits = [split_of(p, 10.0) for p in paths]
    assert splits == [split_of(p, 10.0) for p in paths]
    assert 120 < splits.count("val") < 280


def test_dataset_build_writes_uint16_shards(tiny_dataset, tiny_tokenizer):
    meta = (tiny_dataset / "meta.json").read_text()
    assert "quicksilver-shards-v1" in meta
    train = ShardDataset(tiny_dataset, "train")
    raw = np.fromfile(next(tiny_dataset.glob("train_*.bin")), dtype=np.uint16)
    assert raw.max() < tiny_tokenizer.vocab_size
    assert (raw == tiny_tokenizer.eos_id).sum() >= 2  # documents are separated by end of text
    assert len(train) == raw.size


def test_batches_are_a_function_of_seed_and_step(tiny_dataset):
    data = ShardDataset(tiny_dataset, "train")
    a = data.batch(step=3, batch_size=4, seq_len=32, seed=1)
    assert a.shape == (4, 32) and a.dtype == torch.long
    assert torch.equal(a, data.batch(step=3, batch_size=4, seq_len=32, seed=1))
    assert not torch.equal(a, data.batch(step=4, batch_size=4, seq_len=32, seed=1))
    # Two ranks draw disjoint halves of the global batch.
    r0 = data.batch(3, 2, 32, seed=1, rank=0, world_size=2)
    r1 = data.batch(3, 2, 32, seed=1, rank=1, world_size=2)
    assert torch.equal(torch.cat([r0, r1]), a)


def test_folder_source_and_empty_corpus(tmp_path):
    (tmp_path / "a.py").write_text("print('hi')\n")
    (tmp_path / "b.bin").write_bytes(b"\x00\xff")
    docs = list(folder_source(tmp_path))
    assert [d.path for d in docs] == ["a.py"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        build_dataset(folder_source(empty), tmp_path / "out")


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset folder"):
        ShardDataset(tmp_path, "train")

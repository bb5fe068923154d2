"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``) with Quicksilver's special tokens."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"
MASK = "<|mask|>"
PAD = "<|pad|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
SPECIAL_TOKENS = [EOS, MASK, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]


class TokenizerError(ValueError):
    """A tokenizer file is missing or unusable."""


class Tokenizer:
    """Thin wrapper that knows the special ids and never raises when decoding."""

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        self.vocab_size = hf.get_vocab_size()
        ids = {tok: hf.token_to_id(tok) for tok in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise TokenizerError(f"tokenizer lacks special tokens: {', '.join(missing)}")
        self.eos_id = ids[EOS]
        self.mask_id = ids[MASK]
        self.pad_id = ids[PAD]
        self.fim_prefix_id = ids[FIM_PREFIX]
        self.fim_suffix_id = ids[FIM_SUFFIX]
        self.fim_middle_id = ids[FIM_MIDDLE]
        self.special_ids = frozenset(ids.values())

    # -- files -----------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file at {path}")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises bare Exceptions on malformed JSON
            raise TokenizerError(f"{path} is not a valid tokenizer.json ({e})") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.hf.save(str(path))

    # -- training --------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192, show_progress: bool = False) -> "Tokenizer":
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    # -- use -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for any id sequence: unknown ids are dropped, broken UTF-8 becomes U+FFFD."""
        clean = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special:
            clean = [i for i in clean if i not in self.special_ids]
        try:
            return self.hf.decode(clean, skip_special_tokens=False)
        except Exception:
            return "".join(self.token_text(i) for i in clean)

    def token_text(self, token_id: int) -> str:
        """The text of one token on its own (for live views); '' for ids outside the vocabulary."""
        if not 0 <= token_id < self.vocab_size:
            return ""
        try:
            return self.hf.decode([token_id], skip_special_tokens=False)
        except Exception:
            return ""

    def iter_token_texts(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:
            yield self.token_text(int(i))

"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``) with Quicksilver's special tokens."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from .config import read_json_object

EOS = "<|endoftext|>"
MASK = "<|mask|>"
PAD = "<|pad|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
SPECIAL_TOKENS = [EOS, MASK, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]


class TokenizerError(ValueError):
    """A tokenizer file is missing or unusable."""


# tokenizers' ``encode`` holds the GIL for the whole call while ``encode_batch`` releases it: a long
# text goes through ``encode_batch`` so that a server thread tokenizing a 1 MB prompt does not stop
# every other thread (the event loop included) for a second or more.
_LONG_TEXT = 4096


def _hf_ids(hf: HFTokenizer, text: str) -> list[int]:
    if len(text) > _LONG_TEXT:
        return hf.encode_batch([text], add_special_tokens=False)[0].ids
    return hf.encode(text, add_special_tokens=False).ids


class _Decoding:
    """Decoding shared by both tokenizers: needs ``hf``, ``vocab_size`` and ``special_ids``."""
    hf: HFTokenizer
    vocab_size: int
    special_ids: frozenset[int]
    bos_id: int | None = None  # a beginning-of-sequence id to put first (other families' tokenizers)
    add_bos: bool = False

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

    @property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (a lower bound on a text's token count is its
        length divided by this; the server refuses a far too long prompt without tokenizing it)."""
        most = self.__dict__.get("_max_token_chars")
        if most is None:
            vocab = self.hf.get_vocab(with_added_tokens=True)
            most = self.__dict__["_max_token_chars"] = max((len(t) for t in vocab), default=1) or 1
        return most

    @property
    def special_texts(self) -> list[str]:
        """The strings of the special (control) tokens, e.g. '<|endoftext|>'."""
        texts = (self.hf.id_to_token(i) for i in sorted(self.special_ids) if 0 <= i < self.vocab_size)
        return [t for t in texts if t]

    def encode_literal(self, text: str) -> list[int]:
        """Ids for ``text`` with special-token strings in it taken as plain text (a user who types
        '<|endoftext|>' gets those characters, not end of text).  A second tokenizer object with
        ``encode_special_tokens`` on, so that the shared one is never switched under another thread."""
        literal = self.__dict__.get("_literal_hf")
        if literal is None:
            literal = HFTokenizer.from_str(self.hf.to_str())
            literal.encode_special_tokens = True
            self.__dict__["_literal_hf"] = literal
        ids = _hf_ids(literal, text)
        if self.add_bos and not (ids and ids[0] == self.bos_id):
            ids = [self.bos_id] + ids
        return ids


class Tokenizer(_Decoding):
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
        return _hf_ids(self.hf, text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]



# -- external tokenizers (LLaDA, Dream, ...) ---------------------------------------------------------
def _token_content(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ExternalTokenizer(_Decoding):
    """A Hugging Face ``tokenizer.json`` + ``tokenizer_config.json`` with the special ids a model's
    config names (they need not be Quicksilver's own specials).  Same surface as ``Tokenizer``
    (encode, decode, token_text, the special ids) plus the chat template and ``render_chat``."""

    def __init__(self, hf: HFTokenizer, mask_id: int, eos_id: int, pad_id: int, settings: dict | None = None,
                 stop_ids: Iterable[int] = (), chat_template: str | None = None) -> None:
        settings = settings or {}
        self.hf = hf
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.mask_id, self.eos_id, self.pad_id = mask_id, eos_id, pad_id
        self.stop_ids = [eos_id] + [i for i in stop_ids if i != eos_id]
        self.bos_token = _token_content(settings.get("bos_token"))
        self.eos_token = _token_content(settings.get("eos_token")) or self.token_text(eos_id)
        self.bos_id = hf.token_to_id(self.bos_token) if self.bos_token else None
        self.add_bos = bool(settings.get("add_bos_token", False)) and self.bos_id is not None
        self.chat_template = chat_template
        specials = {i for i, tok in hf.get_added_tokens_decoder().items() if tok.special}
        self.special_ids = frozenset(specials | {mask_id, eos_id, pad_id})
        # Quicksilver's infilling tokens: an external tokenizer has none.
        self.fim_prefix_id = self.fim_suffix_id = self.fim_middle_id = -1

    @classmethod
    def from_folder(cls, folder: str | Path, mask_id: int, eos_id: int, pad_id: int,
                    stop_tokens: Iterable[str] = (), stop_ids: Iterable[int] = ()) -> "ExternalTokenizer":
        """``stop_tokens``: token strings (e.g. '<|eot_id|>') that end a turn, where the vocabulary has them."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file at {path} (a model folder needs its tokenizer.json)")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exceptions on malformed JSON
            raise TokenizerError(f"{path} is not a valid tokenizer.json ({e})") from None
        settings: dict = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            settings = read_json_object(config_path, TokenizerError)
        template = settings.get("chat_template")
        if isinstance(template, list):  # several named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if (folder / "chat_template.jinja").is_file():  # newer exports keep the template in its own file
            template = (folder / "chat_template.jinja").read_text()
        turn_ids = [hf.token_to_id(t) for t in stop_tokens]
        return cls(hf, mask_id, eos_id, pad_id, settings, list(stop_ids) + [i for i in turn_ids if i is not None],
                   template if isinstance(template, str) else None)

    def encode(self, text: str) -> list[int]:
        ids = _hf_ids(self.hf, text)
        if self.add_bos and not (ids and ids[0] == self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def render_chat(self, messages, add_generation_prompt: bool = True) -> str:
        """Prompt text for chat messages through the model's own template (sandboxed Jinja)."""
        from .chat import render_chat
        specials = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token)) if v}
        return render_chat(messages, self.chat_template, add_generation_prompt, **specials)


class TokenizerText:
    """The text side of a ``Backend`` that holds a ``tokenizer``: the same delegations for every
    backend (Quicksilver's ``api.LM`` and DiffusionGemma's), written once."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_literal(self, text: str) -> list[int]:  # special tokens typed by a user stay text
        return self.tokenizer.encode_literal(text)

    @property
    def special_texts(self) -> list[str]:
        return self.tokenizer.special_texts

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id)

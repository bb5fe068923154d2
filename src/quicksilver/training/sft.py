"""Supervised fine-tuning (instruction tuning) of a diffusion model, as LLaDA does it.

Data: JSONL, one example a line, either ``{"prompt": ..., "response": ...}`` or
``{"messages": [{"role": ..., "content": ...}, ...]}`` whose last message is the assistant's
answer.  The prompt is rendered with the chat template (``DEFAULT_CHAT_TEMPLATE`` for
Quicksilver's models) and the answer gets end-of-text appended, then the row is right-padded
with end-of-text to ``seq_len``.  The padding counts as answer: it is masked and learned, which is
how the model learns to stop (samplers cut at the first end-of-text).  Prompt tokens are never
masked and carry no loss.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import ChatTemplateError, render_chat
from ..config import ConfigError
from ..diffusion import LossOutput, sample_times, sft_diffusion_loss
from ..tokenizer import Tokenizer

VAL_PERCENT = 2.0
MAX_FILE_BYTES = 2_000_000_000


@dataclass(frozen=True)
class SFTExample:
    prompt: str  # rendered with the chat template, ends with the assistant header
    response: str
    split: str | None = None  # "train"/"val" when the file says so; otherwise by a hash of the text


def parse_example(obj: object, line_no: int, template: str | None = None) -> SFTExample:
    """One JSONL record as an example, or a ConfigError naming the line."""
    where = f"SFT data line {line_no}"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} is not a JSON object")
    try:
        if "messages" in obj:
            messages = obj["messages"]
            if not isinstance(messages, list) or len(messages) < 2 or not isinstance(messages[-1], dict) \
                    or messages[-1].get("role") != "assistant":
                raise ConfigError(f"{where}: messages must end with an assistant message after at least one other")
            response = messages[-1].get("content")
            prompt = render_chat(messages[:-1], template, add_generation_prompt=True)
        elif "prompt" in obj and "response" in obj:
            response = obj["response"]
            if not isinstance(obj["prompt"], str):
                raise ConfigError(f"{where}: prompt must be a string")
            prompt = render_chat([{"role": "user", "content": obj["prompt"]}], template, add_generation_prompt=True)
        else:
            raise ConfigError(f"{where} needs \"prompt\" and \"response\", or \"messages\"")
    except ChatTemplateError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not isinstance(response, str):
        raise ConfigError(f"{where}: the response must be a string")
    split = obj.get("split")
    return SFTExample(prompt, response, split if split in ("train", "val") else None)


def read_examples(path: str | Path, template: str | None = None) -> list[SFTExample]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no SFT data file at {path} (JSONL of prompt/response or messages)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_FILE_BYTES // 10**9} GB")
    examples = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"SFT data line {i} of {path} is not valid JSON ({e.msg})") from None
            examples.append(parse_example(obj, i, template))
    if not examples:
        raise ConfigError(f"{path} holds no examples")
    return examples


def split_of_example(example: SFTExample, val_percent: float = VAL_PERCENT) -> str:
    if example.split is not None:
        return example.split
    digest = hashlib.sha1((example.prompt + "\x00" + example.response).encode()).digest()
    return "val" if int.from_bytes(digest[:4], "big") % 10_000 < val_percent * 100 else "train"


def encode_example(example: SFTExample, tokenizer: Tokenizer, seq_len: int) -> tuple[list[int], int] | None:
    """(ids padded with end-of-text to ``seq_len``, prompt length), or None when it does not fit
    (a truncated answer would teach the model to stop mid-way, so long examples are dropped)."""
    prompt = tokenizer.encode(example.prompt)
    answer = tokenizer.encode(example.response) + [tokenizer.eos_id]
    if len(prompt) + len(answer) > seq_len:
        return None
    ids = prompt + answer
    return ids + [tokenizer.eos_id] * (seq_len - len(ids)), len(prompt)


class SFTDataset:
    """Encoded examples of one split; a batch is (tokens (B, L), prompt_lengths (B,)).

    Like :class:`~quicksilver.data.shards.ShardDataset`, batch ``step`` depends only on
    (seed, step): the global batch is drawn and each rank takes its own rows.
    """

    def __init__(self, path: str | Path, tokenizer: Tokenizer, seq_len: int, split: str,
                 template: str | None = None) -> None:
        examples = [e for e in read_examples(path, template) if split_of_example(e) == split]
        if split == "val" and not examples:  # tiny files: validate on the first examples
            examples = read_examples(path, template)[:8]
        encoded = [encode_example(e, tokenizer, seq_len) for e in examples]
        kept = [e for e in encoded if e is not None]
        self.dropped = len(encoded) - len(kept)
        if not kept:
            raise ConfigError(f"no {split} example of {path} fits in train.seq_len = {seq_len} tokens")
        self.tokens = torch.tensor([ids for ids, _ in kept], dtype=torch.long)
        self.prompt_lengths = torch.tensor([n for _, n in kept], dtype=torch.long)
        self.split = split

    def __len__(self) -> int:
        """Tokens in the split (for the epochs count), padding included."""
        return int(self.tokens.numel())

    @property
    def num_examples(self) -> int:
        return int(self.tokens.shape[0])

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randint(0, self.num_examples, (batch_size * world_size,), generator=gen)
        rows = rows[rank * batch_size:(rank + 1) * batch_size]
        return self.tokens[rows, :seq_len], self.prompt_lengths[rows]

    def fixed_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        n = min(self.num_examples, n_batches * batch_size)
        return [(self.tokens[i:i + batch_size], self.prompt_lengths[i:i + batch_size])
                for i in range(0, n, batch_size)]


def sft_step_loss(model, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, mcfg,
                  first_row: int = 0, total_rows: int | None = None) -> LossOutput:
    """The SFT loss of this rank's rows; times and masks are drawn for the global batch."""
    tokens, prompt_lengths = batch
    device = next(model.parameters()).device
    b, n = tokens.shape
    total = b if total_rows is None else total_rows
    times = sample_times(total, gen)[first_row:first_row + b]
    draws = torch.rand((total, n), generator=gen)[first_row:first_row + b]
    return sft_diffusion_loss(model, tokens.to(device), prompt_lengths, mcfg.mask_token_id, None,
                              times=times, draws=draws)


def sft_batch_loss(model, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, mcfg,
                   device: torch.device) -> LossOutput:
    """Validation: ``nll_sum`` / ``tokens`` is the mean over examples of the answer's NELBO per token."""
    out = sft_step_loss(model, (batch[0].to(device), batch[1]), gen, mcfg)
    return LossOutput(out.loss, out.nll_sum, int(batch[0].shape[0]))

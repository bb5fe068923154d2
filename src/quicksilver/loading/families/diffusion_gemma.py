"""DiffusionGemma through transformers' own implementation, behind Quicksilver's ``Backend``.

transformers (>= 5.24) runs the model and its ``generate()``: a causal prefill writes the KV cache, a
bidirectional decoder denoises one canvas of ``canvas_length`` tokens at a time.  The noise is
*uniform* (random vocabulary tokens, no mask token) and a step accepts the lowest-entropy positions
while the summed entropy of all but the last stays within the bound gamma (``entropy_bound``, 0.1
nats); every other position is renoised, so nothing within a canvas is final until the canvas is.

Streaming: ``generate()`` calls its streamer's ``put_draft`` with the argmax canvas after every
denoising step, and ``put`` with each finished canvas.  A ``StepEvent`` of ours shows the finished
canvases, and in the current canvas the argmax draft at the positions the sampler accepted at that
step, ``mask_id`` (-1: no token) elsewhere.  Which positions were accepted is read from the running
sampler, which a thin subclass of the model keeps (``_prepare_sampler`` builds it per call).

Request options: ``max_new_tokens`` (DiffusionGemma decodes whole canvases; the output is cut to it),
``steps`` (the cap on denoising steps per canvas, default 48), ``entropy_bound`` (gamma), ``seed``.
The sampler's temperature follows its own schedule (0.8 -> 0.4); ``temperature`` is not applied, and
``top_k``/``top_p`` and commit rules other than the entropy bound are refused.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..layout import CheckpointError
from ...sampling import DecodePolicy, GenerationError, StepEvent, TextResult
from ...sampling.batch import left_pad
from ...sampling.stops import cut_at_eos
from ...tokenizer import ExternalTokenizer, TokenizerError, TokenizerText

NO_TOKEN = -1  # the canvas has no mask token: positions not yet accepted are shown as -1
DEFAULT_STEPS = 48
DEFAULT_ENTROPY_BOUND = 0.1


def _classes():
    """transformers' classes, imported on first use (the dependency is optional)."""
    try:
        from transformers import DiffusionGemmaForBlockDiffusion
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
            DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig)
    except ImportError:
        raise CheckpointError("DiffusionGemma needs transformers >= 5.24 (pip install 'quicksilver-lm[gemma]')") from None
    return DiffusionGemmaForBlockDiffusion, DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig


_TRACED = None


def traced_model_class():
    """``DiffusionGemmaForBlockDiffusion`` that keeps the sampler of its running ``generate()``."""
    global _TRACED
    if _TRACED is None:
        base = _classes()[0]

        class TracedDiffusionGemma(base):
            def _prepare_sampler(self, generation_config):
                sampler = super()._prepare_sampler(generation_config)
                self.quicksilver_sampler = sampler  # read by the streamer after each step
                return sampler

        _TRACED = TracedDiffusionGemma
    return _TRACED


class _StepStreamer:
    """transformers streamer -> Quicksilver ``StepEvent``s for ``on_step`` (generate() needs only
    ``put``, ``put_draft`` and ``end``: the duck-typed contract of its ``BaseStreamer``)."""

    def __init__(self, model, batch: int, gen_len: int, canvas_length: int,
                 on_step: Callable[[StepEvent], None] | None) -> None:
        self.model = model
        self.on_step = on_step
        self.canvas_length = canvas_length
        self.gen_len = gen_len
        self.region = torch.full((batch, gen_len), NO_TOKEN, dtype=torch.long)
        self.canvases = -1  # the first put() is the prompt
        self.steps = 0

    def put(self, value: torch.Tensor) -> None:
        self.canvases += 1
        if self.canvases == 0:
            return
        lo = (self.canvases - 1) * self.canvas_length
        hi = min(lo + self.canvas_length, self.gen_len)
        if lo >= self.gen_len:
            return
        self.region[:, lo:hi] = value[:, :hi - lo].to(torch.long)
        committed = torch.zeros_like(self.region, dtype=torch.bool)
        committed[:, lo:hi] = True
        self._emit(committed, self.canvases - 1)

    def put_draft(self, value: torch.Tensor) -> None:
        self.steps += 1
        lo = self.canvases * self.canvas_length
        if self.on_step is None or lo >= self.gen_len:
            return
        hi = min(lo + self.canvas_length, self.gen_len)
        accepted = self.model.quicksilver_sampler.accepted_token_mask.detach().to("cpu", torch.bool)[:, :hi - lo]
        self.region[:, lo:hi] = torch.where(accepted, value[:, :hi - lo].to(torch.long), NO_TOKEN)
        committed = torch.zeros_like(self.region, dtype=torch.bool)
        committed[:, lo:hi] = accepted
        self._emit(committed, self.canvases)

    def _emit(self, committed: torch.Tensor, block: int) -> None:
        if self.on_step is not None:
            self.on_step(StepEvent(self.steps, block, self.region.clone(), committed, NO_TOKEN))

    def end(self) -> None:
        pass


class DiffusionGemmaBackend(TokenizerText):
    """A DiffusionGemma model (transformers) and its tokenizer, served like any Quicksilver model."""

    is_diffusion = True
    mask_id = NO_TOKEN

    def __init__(self, model, tokenizer: ExternalTokenizer, name: str, eos_ids: list[int], pad_id: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.canvas_length = int(model.config.canvas_length)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.default_policy = DecodePolicy(max_new_tokens=256, block_length=self.canvas_length, steps=DEFAULT_STEPS,
                                           commit="entropy", entropy_bound=DEFAULT_ENTROPY_BOUND, score="entropy")
        self._lock = threading.Lock()  # one generate() at a time: the sampler is kept on the model

    @classmethod
    def from_model(cls, model, tokenizer: ExternalTokenizer, name: str) -> "DiffusionGemmaBackend":
        """Wrap a model built in memory (it must be a ``traced_model_class()`` instance)."""
        text = model.config.text_config
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else text.eos_token_id
        eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        pad = gen.pad_token_id if gen.pad_token_id is not None else text.pad_token_id
        return cls(model, tokenizer, name, eos_ids, int(pad if pad is not None else eos_ids[0]))

    @classmethod
    def from_folder(cls, folder: str | Path, name: str | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> "DiffusionGemmaBackend":
        """Load a DiffusionGemma folder (safetensors only) with transformers."""
        import importlib.util
        folder = Path(folder)
        model_class = traced_model_class()
        # With accelerate, transformers places the weights on the device as it reads them; without it
        # they pass through CPU memory first (fine for small models, a lot for the 26B one).
        placement = {"device_map": str(device)} if importlib.util.find_spec("accelerate") else {}
        try:
            model = model_class.from_pretrained(str(folder), dtype=dtype or "auto", use_safetensors=True, **placement)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder} is not a loadable DiffusionGemma checkpoint ({e})") from None
        model = model.to(device)
        text = model.config.text_config
        eos = model.generation_config.eos_token_id or text.eos_token_id
        eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        try:
            tokenizer = ExternalTokenizer.from_folder(folder, mask_id=NO_TOKEN, eos_id=eos_ids[0],
                                                      pad_id=int(text.pad_token_id or 0), stop_ids=eos_ids[1:])
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None
        return cls.from_model(model, tokenizer, name or folder.name)

    # -- text -----------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Mapping]) -> str:
        return self.tokenizer.render_chat(messages)

    # -- decoding -------------------------------------------------------------------------------
    def _generation_config(self, policy: DecodePolicy):
        _, config_class, sampler_class = _classes()
        policy.validate()
        if policy.commit != "entropy":
            raise GenerationError("DiffusionGemma's sampler accepts by an entropy bound: commit must be 'entropy'")
        if policy.top_k or policy.top_p < 1:
            raise GenerationError("DiffusionGemma's sampler has no top_k/top_p (it follows its own temperature schedule)")
        if policy.entropy_bound <= 0:
            raise GenerationError("entropy_bound must be positive for DiffusionGemma")
        return config_class(max_new_tokens=policy.max_new_tokens, max_denoising_steps=policy.steps or DEFAULT_STEPS,
                            sampler_config=sampler_class(entropy_bound=float(policy.entropy_bound)),
                            eos_token_id=self.eos_ids, pad_token_id=self.pad_id)

    def generate_ids(self, prompts: list[list[int]], policy: DecodePolicy,
                     on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        config = self._generation_config(policy)
        device = next(self.model.parameters()).device
        ids, attention, _, width = left_pad(prompts, self.pad_id, 0, self.pad_id, device)
        canvases = -(-policy.max_new_tokens // self.canvas_length)
        if width + canvases * self.canvas_length > self.context_length:
            raise GenerationError(f"prompt ({width} tokens) plus {canvases} canvas(es) of {self.canvas_length} "
                                  f"exceeds the model's context of {self.context_length} tokens")
        streamer = _StepStreamer(self.model, len(prompts), policy.max_new_tokens, self.canvas_length, on_step)
        devices = [device] if device.type == "cuda" else []
        start = time.perf_counter()
        with self._lock, torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(policy.seed if policy.seed is not None else torch.seed())
            out = self.model.generate(ids, attention_mask=attention, generation_config=config, streamer=streamer)
        seconds = time.perf_counter() - start
        rows, finished = [], []
        for row in out.sequences[:, width:width + policy.max_new_tokens].tolist():
            kept, done = cut_at_eos(row, self.eos_ids) if policy.stop_at_eos else (row, False)
            rows.append(kept)
            finished.append(done)
        return TextResult(ids=rows, texts=[self.tokenizer.decode(r) for r in rows], nfe=streamer.steps,
                            generated_tokens=sum(map(len, rows)), seconds=seconds, finished=finished,
                            row_forwards=streamer.steps * len(prompts))

    def infill_ids(self, prefix: list[int], suffix: list[int], policy: DecodePolicy,
                   on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        raise GenerationError("DiffusionGemma decodes canvases after a prompt; it cannot fill a gap before a suffix")

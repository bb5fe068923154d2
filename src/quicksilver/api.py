"""The Python API: ``lm = quicksilver.load("coder-tiny"); lm.generate("def fib(n):")``.

``LM`` is also the ``Backend`` (``backend.py``) that the engine and the server serve."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .chat import render_chat
from .loading.checkpoint import load_model
from .model import Transformer
from .sampling import Canvas, DecodePolicy, GenerationError, StepEvent, TextResult, fill, generate, resolve_policy
from .sampling.canvas import fim_prompt
from .sampling.policy import FAMILY_DEFAULTS
from .tokenizer import Tokenizer, TokenizerText


@dataclass
class LM(TokenizerText):
    """A loaded model with its tokenizer; ``generate`` takes text and returns text plus stats."""
    model: Transformer
    tokenizer: Tokenizer
    name: str

    # The chat template; Quicksilver's own models carry none and use ``chat.DEFAULT_CHAT_TEMPLATE``.
    chat_template: str | None = None
    # A draft head for verified decoding (``quicksilver.drafter``), loaded from ``<folder>/drafter/``
    # of a causal model when it ships one (the bundled twin does).
    drafter: object | None = None

    @property
    def is_diffusion(self) -> bool:
        return not self.model.config.causal

    # -- the Backend protocol ------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def mask_id(self) -> int:
        return int(self.model.config.mask_token_id)

    @property
    def eos_id(self) -> int:  # optional for a Backend: lets the engine stream text up to end of text
        return int(self.model.config.eos_token_id)

    @property
    def stop_ids(self) -> list[int]:  # optional for a Backend: end of text and end of turn (LLaDA, Dream)
        return [int(i) for i in self.model.config.stop_ids]

    @property
    def default_policy(self) -> DecodePolicy:
        """What every entry point (``generate`` here, the CLI, the server, eval) decodes with when the
        caller names no decoding option: for Quicksilver's diffusion models ``sampling.policy.DEFAULT_PRESET``,
        the ``fast`` preset (DualCache, incremental refresh, threshold 0.3, early stop: the fastest
        measured setting that keeps the reference sampler's output, docs/benchmarks.md); for LLaDA and
        Dream their family's reference sampler (``FAMILY_DEFAULTS``); greedy left-to-right decoding for
        the AR twin, verified decoding when it ships a draft head (the same output as plain greedy
        decoding, token for token, sooner: drafts copied from earlier text, docs/benchmarks.md, "Verified
        decoding").  ``preset="reference"`` is the reference sampler.  A block-diffusion model
        (``block_size``) decodes its own blocks with the exact cache (``sampling/block_causal.py``),
        left to right at threshold 0.9 (``commit="ordered"``: committing by confidence anywhere in the
        block more than doubled its generative perplexity, docs/benchmarks.md, "Block diffusion")."""
        if not self.is_diffusion and self.drafter is not None:
            return resolve_policy(diffusion=False, decoding="verified", draft_source=VERIFIED_DEFAULT_SOURCE)
        policy = resolve_policy(FAMILY_DEFAULTS.get(self.model.config.family), diffusion=self.is_diffusion)
        if self.is_diffusion and self.model.config.block_size:
            policy = dataclasses.replace(policy, block_length=self.model.config.block_size, cache="prefix",
                                         commit="ordered", threshold=0.9)
        return policy

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def score_ids(self, ids: Sequence[int], top: int = 0):
        """Exact log-probabilities of ``ids[1:]`` given the tokens before each (AR twin only), with the
        ``top`` most likely tokens at every position: ``sampling.logprobs.TokenScores``.  A diffusion model
        has no exact per-token likelihood (only a bound on the whole sequence) and raises."""
        if self.is_diffusion:
            raise GenerationError(f"{self.name} is a diffusion model: it has no exact per-token log-probabilities "
                                  "(an autoregressive model such as coder-tiny-ar has)")
        from .sampling.logprobs import ar_token_scores

        return ar_token_scores(self.model, list(ids), top)

    def render_chat(self, messages: Sequence[Mapping]) -> str:
        if self.chat_template is None and hasattr(self.tokenizer, "render_chat"):
            return self.tokenizer.render_chat(messages)  # the model's own template (tokenizer_config.json)
        return render_chat(messages, self.chat_template)

    def generate_ids(self, prompts: list[list[int]], policy: DecodePolicy,
                     on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        return TextResult.of(generate(self.model, prompts, policy, on_step=on_step, drafter=self.drafter),
                             self.tokenizer.decode)

    def infill_ids(self, prefix: list[int], suffix: list[int], policy: DecodePolicy,
                   on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        """Diffusion: the canvas ``[prefix | mask * max_new_tokens | suffix]`` through the block decoder.
        AR twin: its prefix-suffix-middle prompt (``canvas.fim_prompt``) as a completion; so does a
        block-diffusion model, which cannot see a suffix after its block and was trained on that format."""
        if not self.is_diffusion or self.model.config.block_size:
            return self.generate_ids([self.fim_prompt(prefix, suffix)], policy, on_step)
        return self.fill_ids([Canvas.infill(prefix, policy.max_new_tokens, suffix)], policy, on_step)

    def fim_prompt(self, prefix: list[int], suffix: list[int]) -> list[int]:
        """The AR twin's prefix-suffix-middle prompt for a fill between ``prefix`` and ``suffix``."""
        cfg = self.model.config
        return fim_prompt(prefix, suffix, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id)

    def fill_ids(self, canvases: list[Canvas], policy: DecodePolicy,
                 on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        """Fill any canvases (``sampling.canvas``); ``result.spans`` holds each row's spans."""
        return TextResult.of(fill(self.model, canvases, policy, on_step=on_step, drafter=self.drafter),
                             self.tokenizer.decode)

    def decoder(self, policy: DecodePolicy):
        """Step-level batching (optional capability the engine looks for): a ``BlockDecoder`` that
        rows join at block boundaries.  None for the AR twin, which the engine serves by ``generate_ids``."""
        if not self.is_diffusion:
            return None
        from .sampling.diffusion import BlockDecoder

        return BlockDecoder(self.model, policy)

    def encode_prompt(self, prompt) -> list[int]:
        """A prompt as token ids: a string, or a list of token ids (passed through, checked)."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise GenerationError("the prompt is empty")
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and prompt and all(type(t) is int for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise GenerationError(f"token id {bad[0]} is outside this model's vocabulary (0 to {self.vocab_size - 1})")
            return list(prompt)
        raise GenerationError(f"the prompt must be a string or a list of token ids, not {_kind(prompt)}")

    def policy(self, preset: str | None = None, **given) -> DecodePolicy:
        """The decoding policy of a call: ``preset`` (a preset or setting name; default: the model's
        ``default_policy``) with the fields given (None values ignored), through ``sampling.policy``."""
        return resolve_policy(preset, base=None if preset else self.default_policy, diffusion=self.is_diffusion,
                              **given)

    # -- controllable generation (``control/``) ----------------------------------------------------
    def _policy(self, **decoding) -> DecodePolicy:
        # Templates and edits are decoded with the reference rule unless told otherwise: their slots are
        # short, and the measurements in docs/control.md were made with it.
        return self.policy("reference", **decoding)

    def generate_json(self, prompt: str, schema: dict, string_tokens: int = 6, integer_tokens: int = 3,
                      on_step: Callable[[StepEvent], None] | None = None, **decoding):
        """A JSON value valid against ``schema``: the schema is compiled into a canvas template (keys,
        quotes, braces fixed; value slots with budgets and allowed tokens), the model fills the slots
        (diffusion) or decodes under the template's constraints (AR twin), and the text is validated
        with ``jsonschema``.  Returns ``control.StructuredResult`` (``.text``, ``.value``, ``.nfe``).
        Raises ``control.SchemaError`` for a schema the compiler does not support."""
        from .control import Budgets, generate_structured

        policy = self._policy(**decoding)
        return generate_structured(self.model, self.tokenizer, self.encode(prompt), schema, policy,
                                   Budgets(string_tokens=string_tokens, integer_tokens=integer_tokens),
                                   on_step=on_step)

    def edit(self, text: str, spans=None, instruction: str | None = None,
             on_step: Callable[[StepEvent], None] | None = None, **decoding):
        """Regenerate ``spans`` (``(start, end, max_tokens)`` character ranges) of ``text``, or its
        ``<|mask|>`` / ``<|mask:N|>`` placeholders, leaving every other byte unchanged; all spans are
        filled by one decode.  ``instruction`` goes before the text through the chat template.
        Returns ``control.edit.EditResult`` (``.text``, ``.fills``, ``.nfe``)."""
        from .control.edit import check_spans, edit_ids, joint_block, parse_placeholders

        if spans is None:
            text, spans = parse_placeholders(text)
        spans = check_spans(text, spans)
        decoding.setdefault("block_length", joint_block(text, spans, self.encode))  # all spans jointly
        policy = self._policy(**decoding)
        prompt = self.encode(self.render_chat([{"role": "user", "content": instruction}])) if instruction else None
        return edit_ids(self.model, self.tokenizer, text, spans, policy, prompt, on_step)

    # -- the server's side of controllable generation (optional Backend capabilities) ----------------
    def compile_schema(self, schema, string_tokens: int = 6):
        """The canvas layout of ``schema`` (raises ``control.SchemaError``: the server's 400)."""
        from .control import Budgets
        from .control.structured import compile_layout

        return compile_layout(schema, self.tokenizer, self.model.config, Budgets(string_tokens=string_tokens))

    def _region_events(self, lay, on_step):
        """StepEvents of a template fill with dropped slot positions removed, so that the ids before
        the first mask are final text (what the engine streams)."""
        if on_step is None:
            return None
        from .control.structured import display_ids

        def relay(event: StepEvent) -> None:
            ids = display_ids(lay, event.canvas[0].tolist(), self.eos_id)
            on_step(StepEvent(event.step, event.block, torch.tensor([ids]),
                              torch.zeros(1, len(ids), dtype=torch.bool), event.mask_id))
        return relay

    def structured_ids(self, prompt: list[int], schema, lay, policy: DecodePolicy,
                       on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        """Fill the compiled ``lay`` of ``schema`` after ``prompt``; ``texts[0]`` is validated JSON."""
        from .control.structured import generate_structured

        result = generate_structured(self.model, self.tokenizer, prompt, schema, policy, lay=lay,
                                     on_step=self._region_events(lay, on_step))
        ids = self.encode(result.text)
        return TextResult(ids=[ids], texts=[result.text], nfe=result.nfe, generated_tokens=result.tokens,
                                seconds=result.seconds, finished=[True], row_forwards=result.nfe)

    def tool_call_ids(self, prompt: list[int], tools, policy: DecodePolicy,
                      on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        """A tool call: ``tools`` is a list of (name, parameters schema, compiled layout).  With several
        tools the model first chooses the name (an enum slot after ``{"name": ``), then fills that
        tool's arguments after ``{"name": "...", "arguments": ``.  ``texts[0]`` is that JSON object."""
        import json

        from .control.structured import generate_structured

        nfe, seconds = 0, 0.0
        name, schema, lay = tools[0]
        if len(tools) > 1:
            names = [t[0] for t in tools]
            pick = generate_structured(self.model, self.tokenizer, prompt + self.encode('{"name": '),
                                       {"enum": names}, policy)
            nfe, seconds = pick.nfe, pick.seconds
            name, schema, lay = tools[names.index(pick.value)]
        head = prompt + self.encode('{"name": ' + json.dumps(name) + ', "arguments": ')
        args = generate_structured(self.model, self.tokenizer, head, schema, policy, lay=lay,
                                   on_step=self._region_events(lay, on_step))
        text = json.dumps({"name": name, "arguments": args.value}, ensure_ascii=False)
        return TextResult(ids=[self.encode(text)], texts=[text], nfe=nfe + args.nfe,
                                generated_tokens=args.tokens, seconds=seconds + args.seconds, finished=[True],
                                row_forwards=nfe + args.nfe)

    def edit_ids(self, prompt: list[int], text: str, spans, policy: DecodePolicy,
                 on_step: Callable[[StepEvent], None] | None = None, literal: bool = True) -> TextResult:
        """Regenerate ``spans`` of ``text`` (checked by ``control.edit.check_spans``) after ``prompt``;
        ``texts[0]`` is the whole edited text."""
        from .control.edit import edit_ids

        # The AR twin fills span by span through FIM: no whole-text drafts, so no on_step for it.
        relay = on_step if self.is_diffusion else None
        result = edit_ids(self.model, self.tokenizer, text, spans, policy, prompt, relay, whole_text_drafts=True,
                          literal=literal)
        ids = self.encode(result.text)
        return TextResult(ids=[ids], texts=[result.text], nfe=result.nfe, generated_tokens=len(ids),
                                seconds=result.seconds, finished=[True], row_forwards=result.nfe)

    def generate(self, prompt, max_new_tokens: int | None = None, steps: int | None = None,
                 block_length: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop_at_eos: bool | None = None,
                 on_step: Callable[[StepEvent], None] | None = None, suffix: str | None = None,
                 preset: str | None = None, **decoding) -> TextResult:
        """Complete one prompt (or a list of prompts, decoded as one batch).  A prompt is a string or
        a list of token ids.  With ``suffix`` the model fills the gap between ``prompt`` and
        ``suffix`` (``max_new_tokens`` is the gap's budget; see ``infill``).

        Decoding is the model's default (``default_policy``: for Quicksilver's diffusion models the
        ``fast`` preset) unless ``preset`` names another (``preset="reference"`` is the reference
        sampler, one token per forward pass); every argument given overrides it, and ``decoding``
        takes any other ``DecodePolicy`` field, e.g. ``commit="threshold"``, ``threshold=0.9``,
        ``cache="dual"``, or ``decoding="verified"`` (with ``draft_length``, ``draft_source``) for a
        causal model: drafts are checked and the model keeps exactly its own choices.  ``steps`` alone
        selects the fixed schedule.
        """
        policy = self.policy(preset, max_new_tokens=max_new_tokens, steps=steps, block_length=block_length,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_at_eos=stop_at_eos,
                             **decoding)
        if suffix is not None:
            if not isinstance(prompt, str):
                raise GenerationError("with suffix, the prompt must be one string")
            return self.infill(prompt, suffix, on_step=on_step, policy=policy)
        single = isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and bool(prompt)
                                             and all(type(t) is int for t in prompt))
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, (int, float)) for t in prompt) \
                and not single:
            raise GenerationError("token ids must be whole numbers (a list of integers)")
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise GenerationError(f"the prompt must be a string, a list of token ids or a list of those, "
                                  f"not {_kind(prompt)}")
        ids = [self.encode_prompt(p) for p in prompts]
        return TextResult.of(generate(self.model, ids, policy, on_step=on_step, drafter=self.drafter),
                             self.tokenizer.decode)

    def infill(self, prefix: str, suffix: str, max_new_tokens: int | None = None,
               on_step: Callable[[StepEvent], None] | None = None, policy: DecodePolicy | None = None,
               preset: str | None = None, **decoding) -> TextResult:
        """Fill the gap between ``prefix`` and ``suffix`` (text): a diffusion model decodes masks
        between them; the AR twin generates in its prefix-suffix-middle format.  ``result.text`` is
        the middle; ``max_new_tokens`` (default 128, or the policy's) bounds it."""
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise GenerationError(f"prefix and suffix must be strings, not {_kind(prefix if not isinstance(prefix, str) else suffix)}")
        if policy is None:
            policy = self.policy(preset, max_new_tokens=max_new_tokens, **decoding)
        elif max_new_tokens is not None:
            policy = dataclasses.replace(policy, max_new_tokens=max_new_tokens)
        if not prefix.strip() and not suffix.strip():
            raise GenerationError("the prompt is empty")
        return self.infill_ids(self.tokenizer.encode(prefix), self.tokenizer.encode(suffix), policy, on_step)


def _kind(value) -> str:
    """A value's type in plain words, for messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", type(None): "None",
             list: "a list", tuple: "a list"}
    return names.get(type(value), f"a {type(value).__name__}")


def load(name_or_path: str | os.PathLike = "coder-tiny", device: str | None = None,
         dtype: torch.dtype | None = torch.float32, progress: bool | None = None, threads: int | None = None):
    """Load a bundled model by name, a checkpoint folder or a Hugging Face Hub id; the family comes
    from its config.json.  Quicksilver, LLaDA and Dream give an ``LM`` (Quicksilver's own model
    code); DiffusionGemma, which runs in transformers, gives its ``DiffusionGemmaBackend``.

    On the CPU this sets torch's thread count: ``threads``, else ``QUICKSILVER_THREADS``, else the
    measured default (``quicksilver.threads``: one thread on a 2-CPU machine)."""
    from .loading.checkpoint import resolve_model_path
    from .device import resolve_device
    from .loading.families import family_of, read_config
    device = resolve_device(device)
    if device == "cpu":
        from .threads import apply_threads
        apply_threads(threads)
    folder = resolve_model_path(name_or_path)
    if family_of(read_config(folder)) == "diffusion_gemma":
        from .loading.families.diffusion_gemma import DiffusionGemmaBackend
        return DiffusionGemmaBackend.from_folder(folder, name=str(name_or_path), device=device, dtype=dtype)
    model, tokenizer = load_model(folder, device=device, dtype=dtype, progress=progress)
    return LM(model, tokenizer, str(name_or_path), drafter=_drafter_for(folder, model))


def load_backend(name_or_path: str | os.PathLike = "coder-tiny", device: str | None = None,
                 dtype: torch.dtype | None = None, progress: bool | None = None):
    """What the engine serves (``backend.Backend``) for any supported folder: Quicksilver's own code
    for Quicksilver, LLaDA and Dream checkpoints; transformers for DiffusionGemma.  ``dtype`` None
    keeps the checkpoint's (float32 for the bundled models' bf16 weights on CPU)."""
    from .loading.checkpoint import resolve_model_path
    from .device import resolve_device
    from .loading.families import family_of, read_config
    device = resolve_device(device)
    folder = resolve_model_path(name_or_path)
    family = family_of(read_config(folder))
    if family == "diffusion_gemma":
        from .loading.families.diffusion_gemma import DiffusionGemmaBackend
        return DiffusionGemmaBackend.from_folder(folder, name=str(name_or_path), device=device, dtype=dtype)
    if family == "quicksilver" and dtype is None:
        dtype = torch.float32
    model, tokenizer = load_model(folder, device=device, dtype=dtype, progress=progress)
    return LM(model, tokenizer, str(name_or_path), drafter=_drafter_for(folder, model))


# The drafts the default verified decoding uses (``DecodePolicy.draft_source``): the fastest measured
# on the bundled twin (docs/benchmarks.md, "Verified decoding").
VERIFIED_DEFAULT_SOURCE = "lookup"


def _drafter_for(folder, model):
    """The draft head shipped in ``folder/drafter/`` for a causal model, or None."""
    from .drafter import find_drafter, load_drafter
    found = find_drafter(folder) if model.config.causal else None
    return load_drafter(found, model) if found is not None else None

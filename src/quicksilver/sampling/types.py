"""What a caller asks of a decoder (``DecodePolicy``) and what it gets back."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

import torch

# The enumerated fields of ``DecodePolicy``: the Literal types are what the server's request schema
# and the CLI are generated from; the tuples are what ``validate`` checks.
Commit = Literal["fixed", "threshold", "ordered", "factor", "entropy"]
Score = Literal["probability", "margin", "entropy"]
Schedule = Literal["linear", "dream"]
CacheMode = Literal["none", "prefix", "dual"]
Refresh = Literal["full", "incremental"]
COMMIT_RULES: tuple[str, ...] = get_args(Commit)
SCORES: tuple[str, ...] = get_args(Score)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
REFRESH_MODES: tuple[str, ...] = get_args(Refresh)
Decoding = Literal["auto", "verified"]
DraftSource = Literal["head", "lookup", "head+lookup"]
DECODINGS: tuple[str, ...] = get_args(Decoding)
DRAFT_SOURCES: tuple[str, ...] = get_args(DraftSource)


class GenerationError(ValueError):
    """A generation request that cannot be served as asked (one clear sentence)."""


@dataclass
class DecodePolicy:
    max_new_tokens: int = 128
    block_length: int = 32  # diffusion: positions decoded together, blocks run left to right
    steps: int | None = None  # diffusion: total forward passes over all blocks; None = one token per step
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True
    # -- fast decoding (diffusion); the defaults are the reference sampler ------------------------
    # How many masked positions of the block to commit per step:
    #   "fixed": the linear schedule from ``steps`` (the reference);
    #   "threshold": the best position plus every other whose score is above ``threshold``;
    #   "ordered": left to right, the leftmost masked position plus the run after it scored above
    #   ``threshold`` (semi-autoregressive: a block model keeps its AR twin's order);
    #   "factor": Fast-dLLM's factor rule, the longest run of ranks k with (k + 1)(1 - p_k) <= ``factor``;
    #   "entropy": lowest-entropy positions while their summed entropy stays <= ``entropy_bound``.
    # The rules other than "fixed" always commit at least one position and ignore ``steps``.
    commit: Commit = "fixed"
    score: Score = "probability"  # ranks positions: "probability" | "margin" (top-1 - top-2) | "entropy" (negative)
    # How the "fixed" rule shares a block's positions out over its steps: "linear" (LLaDA: equal
    # shares, decided up front) or "dream" (Dream's time grid: floor(masked * (1 - s/t)) per step with
    # t, s consecutive points of linspace(1, 1e-3, steps + 1), everything left on the last step).
    schedule: Schedule = "linear"
    # Score on the tempered distribution, softmax(logits / temperature) (Dream), instead of the
    # untempered one (LLaDA).  No effect at temperature 0.
    score_tempered: bool = False
    threshold: float = 0.9
    factor: float = 1.0
    entropy_bound: float = 0.5  # nats, summed over the positions committed in one step
    # "none": every step runs the whole canvas; "prefix": one full pass per block, later steps run the
    # block and everything after it against the cached prompt + finished blocks; "dual": the suffix's
    # keys/values are cached too and only the block is run.
    cache: CacheMode = "none"
    # How a cached block starts: "full" runs the whole canvas (Fast-dLLM: the prompt and finished
    # blocks are recomputed once per block); "incremental" runs only the block just finished, the new
    # block and the suffix against the cached prefix, so the prompt is encoded once per generation.
    refresh: Refresh = "full"
    # How many masked positions after the active block the model sees; None = the whole canvas.
    window: int | None = None
    # Stop a row as soon as end of text is committed and every position before it is, instead of at
    # the end of that block; the rest of its canvas is dropped, never decoded.  Outputs are unchanged.
    early_stop: bool = False
    # -- correction while refining (``correction.py``; off by default) ---------------------------
    # "remask": each step may reopen up to ``remask_share`` of the block's committed tokens (decaying
    # to 0 at its last step) when fresh proposals are surer, at equal forward passes; "edit": after a
    # block is full, up to ``edit_passes`` passes replace committed tokens whose best token now differs
    # with probability above ``edit_threshold``; "both".  Prompt/suffix/template tokens never change.
    correct: str = "none"
    remask_share: float = 0.25
    edit_threshold: float = 0.9
    edit_passes: int = 2
    # -- verified decoding (sampling/verified.py) --------------------------------------------------
    # "auto": the model's own sampler (block diffusion, or AR for a causal model); "verified": a draft
    # head proposes ``draft_length`` tokens per round and the causal model keeps exactly what it would
    # have written itself (greedy: token for token; sampling: the same distribution).
    decoding: Decoding = "auto"
    draft_length: int = 8
    # Where drafts come from: "head" (the draft head), "lookup" (copied from the row's own prompt and
    # output after a matching 3- or 2-gram), "head+lookup" (the copy where there is one, else the head).
    draft_source: DraftSource = "head"

    def validate(self) -> None:
        if self.max_new_tokens <= 0:
            raise GenerationError("max_new_tokens must be a positive integer")
        if self.block_length <= 0:
            raise GenerationError("block_length must be a positive integer")
        if self.steps is not None and self.steps <= 0:
            raise GenerationError("steps must be a positive integer")
        if self.temperature < 0:
            raise GenerationError("temperature must be zero or positive")
        if not 0 < self.top_p <= 1:
            raise GenerationError("top_p must be in (0, 1]")
        if self.commit not in COMMIT_RULES:
            raise GenerationError(f"commit must be one of {', '.join(COMMIT_RULES)}, got '{self.commit}'")
        if self.score not in SCORES:
            raise GenerationError(f"score must be one of {', '.join(SCORES)}, got '{self.score}'")
        if self.schedule not in SCHEDULES:
            raise GenerationError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.cache not in CACHE_MODES:
            raise GenerationError(f"cache must be one of {', '.join(CACHE_MODES)}, got '{self.cache}'")
        if self.refresh not in REFRESH_MODES:
            raise GenerationError(f"refresh must be one of {', '.join(REFRESH_MODES)}, got '{self.refresh}'")
        if self.window is not None and self.window < 0:
            raise GenerationError("window must be zero or positive (or None for the whole canvas)")
        if self.decoding not in DECODINGS:
            raise GenerationError(f"decoding must be one of {', '.join(DECODINGS)}, got '{self.decoding}'")
        if self.draft_length <= 0:
            raise GenerationError("draft_length must be a positive integer")
        if self.draft_source not in DRAFT_SOURCES:
            raise GenerationError(f"draft_source must be one of {', '.join(DRAFT_SOURCES)}, got '{self.draft_source}'")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise GenerationError(f"{f.name} must be a finite number")
        if not 0 <= self.threshold <= 1:
            raise GenerationError("threshold must be between 0 and 1")
        if self.top_k < 0:
            raise GenerationError("top_k must be zero (off) or positive")
        if self.factor <= 0:
            raise GenerationError("factor must be positive")
        if self.correct not in ("none", "remask", "edit", "both"):
            raise GenerationError(f"correct must be one of none, remask, edit, both, got '{self.correct}'")
        if not 0 <= self.remask_share <= 1:
            raise GenerationError("remask_share must be in [0, 1]")
        if not 0 < self.edit_threshold <= 1:
            raise GenerationError("edit_threshold must be in (0, 1]")
        if self.edit_passes < 0:
            raise GenerationError("edit_passes must be zero or positive")
        if self.entropy_bound < 0:
            raise GenerationError("entropy_bound must be zero or positive")

    def describe(self) -> str:
        """A short label of the decoding setting, e.g. 'dual · threshold 0.9 (probability)'."""
        if self.decoding == "verified":
            source = "" if self.draft_source == "head" else f" · {self.draft_source}"
            return f"verified · draft {self.draft_length}{source}"
        rule = {"fixed": f"fixed {self.steps or 'one/token'} steps", "threshold": f"threshold {self.threshold:g}",
                "ordered": f"left to right, threshold {self.threshold:g}",
                "factor": f"factor {self.factor:g}", "entropy": f"entropy ≤ {self.entropy_bound:g}"}[self.commit]
        if self.commit != "fixed" and self.score != "probability":
            rule += f" ({self.score})"
        cache = self.cache + ("+incremental" if self.refresh == "incremental" and self.cache != "none" else "")
        window = "" if self.window is None else f" · window {self.window}"
        return f"{cache} · {rule}{window} · block {self.block_length}"


@dataclass
class StepEvent:
    """Emitted after every forward pass: the generated region of the canvas of each row."""
    step: int  # forward passes so far (NFE)
    block: int
    canvas: torch.Tensor  # (B, G) each row's generated positions (its spans), mask id where not yet committed
    committed: torch.Tensor  # (B, gen_len) bool: positions committed by this step
    mask_id: int
    # Verified decoding: this round's drafts where they were proposed (mask id elsewhere); ``canvas``
    # holds only what was accepted.
    draft: torch.Tensor | None = None


@dataclass
class GenerationResult:
    """What a sampler returns: token ids and the decoder's accounting (``TextResult`` adds the texts)."""
    ids: list[list[int]]  # per row: generated ids up to (not including) end of text
    nfe: int  # forward passes of the model (prefill included for AR)
    generated_tokens: int  # sum over rows of len(ids[row])
    seconds: float
    finished: list[bool] = field(default_factory=list)  # per row: ended with end of text
    history: list[torch.Tensor] | None = None
    # Seconds from the start until the first generated position of every row was final (streamable).
    first_token_seconds: float | None = None
    # Sum over forward passes of the rows they ran (finished rows leave the batch): row-forwards.
    row_forwards: int = 0
    # Verified decoding: per-round acceptance and draft/verify time (``sampling.verified.RoundStats``).
    verified: object | None = None
    forwards: list[int] | None = None  # per row: the forward passes it took part in (diffusion)
    spans: list[list[list[int]]] | None = None  # per row, per masked span: its ids (canvas decoding)

    @property
    def tokens_per_forward(self) -> float:
        rows = max(1, len(self.ids))
        return self.generated_tokens / rows / max(1, self.nfe)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)

    def stats_line(self) -> str:
        return (f"{self.generated_tokens} tokens · {self.nfe} forward passes · "
                f"{self.tokens_per_forward:.2f} tokens/forward · {self.seconds:.2f} s · "
                f"{self.tokens_per_second:.1f} tokens/s")


@dataclass
class TextResult(GenerationResult):
    """A ``GenerationResult`` with each row's ids decoded to text (what a ``Backend`` returns)."""
    texts: list[str] = field(kw_only=True)

    @classmethod
    def of(cls, result: GenerationResult, decode) -> "TextResult":
        fields = {name: getattr(result, name) for name in GenerationResult.__dataclass_fields__}
        return cls(**fields, texts=[decode(row) for row in result.ids])

    @property
    def text(self) -> str:
        return self.texts[0]

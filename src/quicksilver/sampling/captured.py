"""The cached decoding step on static buffers, replayed as a CUDA graph on a GPU.

A cached step (an AR token, or a diffusion block's queries under the prefix/dual cache) runs the
whole network on a handful of tokens.  At batch 1 on a GPU its time is then set by the bytes of the
weights and by the launch of several hundred small kernels from Python; a CUDA graph records those
launches once and replays them with one call.  A graph replays fixed memory, so the step works on
buffers allocated once: the query ids and positions, the context's keys/values (a ``ContextCache``,
whose scratch slot the step overwrites in place) and the context's padding mask.  ``load`` copies a
new context in (a new block), ``run`` copies the queries in and replays.

On a CPU (or with ``graph=False``) the same buffers and the same function run eagerly, so the
captured path is checked for exact equality against the plain cached pass without a GPU
(``tests/test_captured_step.py``).  ``compile=True`` runs the step through ``torch.compile`` first
(and captures the compiled function on a GPU).
"""
from __future__ import annotations

import torch

from .forward import ContextCache


class CapturedStep:
    """``batch`` rows of ``query_len`` tokens against ``context_len`` cached positions.

    ``logits``: also apply the LM head, to every query position (True) or to a slice of them (the
    positions a decoder reads, e.g. the active block of a full-canvas pass); otherwise the output is
    the final-norm hidden states, as ``model.hidden_states`` returns.
    ``padded``: keep padding masks for the context and for the queries (rows of unequal lengths, as
    ``sampling.forward.BlockForward`` passes them); without them every key is attended, the faster case.  The output tensor is reused by the next ``run``: copy it to keep it.
    """

    def __init__(self, model, batch: int, context_len: int, query_len: int, *, padded: bool = False,
                 logits: bool | slice = False, graph: bool | None = None, compile: bool = False, warmup: int = 2) -> None:
        cfg = model.config
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        self.model = model
        self.head_rows = slice(None) if logits is True else (logits or None)
        self.context_len, self.query_len = context_len, query_len
        self.ids = torch.zeros(batch, query_len, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, query_len, dtype=torch.long, device=device)
        shape = (batch, cfg.num_key_value_heads, context_len, cfg.head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        mask = torch.ones(batch, context_len, dtype=torch.long, device=device) if padded else None
        self.query_mask = torch.ones(batch, query_len, dtype=torch.long, device=device) if padded else None
        # ContextCache copies the context into buffers with room for the queries' slot.
        self.cache = ContextCache(keys, values, mask, query_len)
        del keys, values
        self._fn = torch.compile(self._forward, dynamic=False) if compile else self._forward
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        use_graph = device.type == "cuda" if graph is None else graph
        if use_graph:
            self.capture(warmup)

    @torch.no_grad()
    def _forward(self) -> torch.Tensor:
        hidden = self.model.hidden_states(self.ids, positions=self.positions, attention_mask=self.query_mask,
                                          cache=self.cache)
        return hidden if self.head_rows is None else self.model.head(hidden[:, self.head_rows])

    @torch.no_grad()
    def capture(self, warmup: int = 2) -> None:
        """Record the step as a CUDA graph (after ``warmup`` eager calls); later ``run``s replay it."""
        if self.ids.device.type != "cuda":
            raise ValueError("a CUDA graph needs the model on a CUDA device")
        # Warm-up on a side stream (allocator pools, cuBLAS workspaces, compiled kernels), then record.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self._fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._fn()

    @torch.no_grad()
    def load(self, keys: list[torch.Tensor], values: list[torch.Tensor], mask: torch.Tensor | None = None) -> None:
        """Copy a context (per layer (B, H_kv, context_len, D); its padding mask (B, context_len))."""
        n = self.context_len
        if keys[0].shape[2] != n:
            raise ValueError(f"this step was built for a context of {n} positions, got {keys[0].shape[2]}")
        for buf, k in zip(self.cache.keys, keys):
            buf[:, :, :n].copy_(k)
        for buf, v in zip(self.cache.values, values):
            buf[:, :, :n].copy_(v)
        if (mask is None) != (self.cache.attention_mask is None):
            raise ValueError("the context's padding mask must be given exactly when the step was built padded")
        if mask is not None:
            self.cache.attention_mask.copy_(mask)

    def load_cache(self, context: ContextCache) -> None:
        """Copy the context of a decoder's ``ContextCache`` (its scratch slot is not needed)."""
        n = context.length
        self.load([k[:, :, :n] for k in context.keys], [v[:, :, :n] for v in context.values], context.attention_mask)

    @torch.no_grad()
    def run(self, ids: torch.Tensor, positions: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One step: the queries' hidden states (or logits), (B, query_len, ·).  ``query_mask``: the
        queries' padding (B, query_len), for a step built ``padded`` (default: no query is padding)."""
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        if self.query_mask is not None:
            self.query_mask.copy_(query_mask if query_mask is not None else torch.ones_like(self.query_mask))
        elif query_mask is not None:
            raise ValueError("a query padding mask needs a step built padded")
        if self.graph is None:
            self.out = self._fn()
        else:
            self.graph.replay()
        return self.out

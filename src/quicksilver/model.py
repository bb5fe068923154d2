"""The network: a Llama-style transformer, bidirectional (diffusion) or causal (the AR twin).

One forward pass maps token ids to logits.  Callers pass explicit ``positions`` (rotary positions)
and an ``attention_mask`` (1 = real token, 0 = padding) so that batches of unequal prompts work, and
optionally a :class:`KVCache` holding keys/values of earlier tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 for stability under bf16 autocast, as Llama does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables of shape (B, 1, L, head_dim) for integer positions of shape (B, L)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, L, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, L, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Keys and values of earlier tokens, one (k, v) pair per layer, shape (B, H_kv, T, D).

    ``extend`` extends the cache (AR decoding, prefix caching); ``crop`` cuts it back to a length.
    The padding mask of the cached tokens lives in ``attention_mask`` (B, T), kept by the cache's
    owner (the sampler), so that later calls can mask cached padding without repeating it; the model
    reads it and never writes it.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.attention_mask: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def crop(self, length: int) -> None:
        for i, k in enumerate(self.keys):
            if k is not None:
                self.keys[i] = k[:, :, :length]
                self.values[i] = self.values[i][:, :, :length]
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[:, :length]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, hk, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, h * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, hk * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, hk * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=False)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache: KVCache | None, layer: int):
        b, n, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(b, n, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        if cos.dtype != q.dtype:  # rope_fp32: rotate in float32, continue in the model's dtype
            q, k = apply_rotary(q.float(), cos, sin).to(q.dtype), apply_rotary(k.float(), cos, sin).to(k.dtype)
        else:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, is_causal, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def block_causal_mask(positions: torch.Tensor, block_size: int, past_len: int) -> torch.Tensor:
    """(B, 1, Lq, past_len + Lq): query i sees query j iff j's block (position // block_size) is not
    after i's; every cached key is visible (a block-causal cache holds only finished, earlier blocks)."""
    blocks = torch.div(positions, block_size, rounding_mode="floor")
    mask = blocks[:, :, None] >= blocks[:, None, :]
    if past_len:
        mask = torch.cat([mask.new_ones(mask.shape[0], mask.shape[1], past_len), mask], dim=2)
    return mask[:, None]


def build_attention_mask(
    cfg: ModelConfig,
    query_len: int,
    past_len: int,
    attention_mask: torch.Tensor | None,
    device: torch.device,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """Boolean SDPA mask (B or 1, 1, Lq, Lk), True = may attend; or (None, is_causal) when no mask is needed.

    ``attention_mask`` is (B, past_len + query_len) with 1 for real tokens.  Padding *queries* are
    allowed to attend everywhere: their outputs are never used, and a row with no allowed key would
    give NaN.  Block-causal models (``cfg.block_size``) read the queries' blocks from ``positions``.
    """
    key_len = past_len + query_len
    block = getattr(cfg, "block_size", 0) and not cfg.causal
    if attention_mask is None and not block:
        if not cfg.causal:
            return None, False
        if past_len == 0:
            return None, True
    mask = None
    if block:
        if positions is None:
            positions = torch.arange(past_len, key_len, device=device)[None, :]
        mask = block_causal_mask(positions.to(device), cfg.block_size, past_len)
    elif cfg.causal:
        q_idx = torch.arange(past_len, key_len, device=device)[:, None]
        k_idx = torch.arange(key_len, device=device)[None, :]
        mask = (k_idx <= q_idx)[None, None]  # (1, 1, Lq, Lk)
    if attention_mask is not None:
        am = attention_mask.to(device=device, dtype=torch.bool)
        if am.shape[1] != key_len:
            raise ValueError(f"attention_mask covers {am.shape[1]} tokens, expected {key_len}")
        keys_ok = am[:, None, None, :]
        mask = keys_ok if mask is None else (mask & keys_ok)
        query_is_pad = ~am[:, past_len:][:, None, :, None]
        mask = mask | query_is_pad
    return mask, False


class Transformer(nn.Module):
    """Token embedding, N pre-norm blocks, final norm, untied LM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out_std = 0.02 / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.ones_(p)
                continue
            std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_outputs: list | None = None,
        layout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, L, D); ``head`` turns any subset of them into logits.

        ``layer_outputs``, when given, receives every layer's output (the residual stream, before the
        final norm): a draft head reads them as features of the tokens (``quicksilver.drafter``).
        ``layout`` (bool, (B or 1, 1, L, L), True = may attend) replaces the model's own attention
        rule for one call: training layouts such as block diffusion's [x_t ; x_0] (``diffusion.py``)."""
        b, n = input_ids.shape
        past = cache.length if cache is not None else 0
        # The mask may cover the cached keys and the new tokens, or only the new tokens (then the
        # cache's own mask, which its owner keeps, covers the cached keys).  The model never writes it.
        if past and cache.attention_mask is not None and attention_mask is None:
            attention_mask = torch.ones(b, n, dtype=torch.long, device=input_ids.device)
        if past and attention_mask is not None and attention_mask.shape[1] == n:
            cached = cache.attention_mask
            if cached is None:
                cached = torch.ones(b, past, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([cached.to(attention_mask.dtype), attention_mask], dim=1)
        if positions is None:
            positions = torch.arange(past, past + n, device=input_ids.device).expand(b, n)
        x = self.embed_tokens(input_ids)
        rope_dtype = torch.float32 if self.config.rope_fp32 else x.dtype
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, rope_dtype)
        if layout is not None:
            mask, is_causal = layout.to(input_ids.device), False
        else:
            mask, is_causal = build_attention_mask(self.config, n, past, attention_mask, input_ids.device, positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, is_causal, cache, i)
            if layer_outputs is not None:
                layer_outputs.append(x)
        return self.norm(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward(self, input_ids, positions=None, attention_mask=None, cache=None) -> torch.Tensor:
        return self.head(self.hidden_states(input_ids, positions, attention_mask, cache))

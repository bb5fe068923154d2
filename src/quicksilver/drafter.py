"""A draft head for verified decoding (DFlash-style): one or two bidirectional layers on a frozen
causal model (the *target*, e.g. the AR twin ``coder-tiny-ar``).

The head drafts a whole block in one pass.  Its input is the block ``[anchor, M, M, ..., M]``: the
last token the target accepted (not yet in the target's cache) followed by ``k`` learned mask
vectors.  Its context is the target's own view of every earlier token: the outputs of a few target
layers, concatenated and fused (linear + RMSNorm) into one feature per token, which every head layer
projects with its own key/value weights and attends to (keys and values "injected" from the target).
Inside the block attention is bidirectional.  The head borrows the target's token embedding and LM
head (frozen, not stored), so it is small: about 1.6M parameters for the bundled twin.

It is trained with the target frozen to predict the target's own greedy continuation of the next
``k`` positions (``training/drafter.py``), so that the target accepts its drafts often.  A trained
head is a folder with ``config.json`` (``DrafterSpec`` plus the target's dimensions) and
``model.safetensors``; nothing else is ever loaded (no pickle).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, ModelConfig, read_json_object
from .model import Block, KVCache, RMSNorm, Transformer, rotary_cos_sin

DRAFTER_DIR = "drafter"  # where a model folder keeps its draft head, e.g. models/coder-tiny-ar/drafter/


@dataclass
class DrafterSpec:
    num_layers: int = 2
    block_size: int = 12  # anchor + draft positions; drafts at most block_size - 1 tokens per round
    target_layers: list = field(default_factory=lambda: [1, 3, 5])  # 0-based target layers whose outputs are fused
    intermediate_size: int = 0  # 0: the target's

    def validate(self, target: ModelConfig) -> None:
        if self.num_layers <= 0:
            raise ConfigError("drafter.num_layers must be positive")
        if self.block_size < 2:
            raise ConfigError("drafter.block_size must be at least 2 (an anchor and one draft position)")
        if not self.target_layers or any(not 0 <= int(i) < target.num_hidden_layers for i in self.target_layers):
            raise ConfigError(f"drafter.target_layers must name layers 0..{target.num_hidden_layers - 1} of the target")

    @classmethod
    def from_dict(cls, d: dict) -> "DrafterSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} in [drafter]: {', '.join(unknown)}")
        return cls(**d)


class DraftHead(nn.Module):
    """Fuse, ``num_layers`` blocks of the target's shape (bidirectional), a final norm."""

    def __init__(self, target: ModelConfig, spec: DrafterSpec) -> None:
        super().__init__()
        spec.validate(target)
        self.spec = spec
        self.target_config = target
        inter = spec.intermediate_size or target.intermediate_size
        self.config = dataclasses.replace(target, causal=False, num_hidden_layers=spec.num_layers,
                                          intermediate_size=inter)
        d = target.hidden_size
        self.fuse = nn.Linear(len(spec.target_layers) * d, d, bias=False)
        self.fuse_norm = RMSNorm(d, target.rms_norm_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(d))
        self.layers = nn.ModuleList(Block(self.config) for _ in range(spec.num_layers))
        self.norm = RMSNorm(d, target.rms_norm_eps)
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if p.dim() == 1 and name != "mask_embedding":
                    p.fill_(0.0 if name.endswith("bias") else 1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- context: the target's features of earlier tokens ----------------------------------------
    def fuse_features(self, layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        """(B, L, D) context features from the target's per-layer outputs (a full list, one per layer)."""
        picked = torch.cat([layer_outputs[i] for i in self.spec.target_layers], dim=-1)
        return self.fuse_norm(self.fuse(picked.to(self.fuse.weight.dtype)))

    def context_kv(self, features: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> KVCache:
        """Per head layer, keys (rotated at ``positions``) and values of context ``features``,
        appended to ``cache`` (a new one when None)."""
        cache = cache or KVCache(len(self.layers))
        cfg = self.config
        b, n, _ = features.shape
        cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, features.dtype)
        from .model import apply_rotary
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            k = attn.k_proj(features).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
            v = attn.v_proj(features).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
            cache.extend(i, apply_rotary(k, cos, sin), v)
        return cache

    # -- the block ---------------------------------------------------------------------------------
    def block_inputs(self, embed: nn.Embedding, anchors: torch.Tensor, draft_len: int) -> torch.Tensor:
        """(B, m, draft_len + 1, D) inputs for anchors (B, m): the anchor's embedding, then mask vectors."""
        first = embed(anchors)[..., None, :]
        masks = self.mask_embedding.to(first.dtype).expand(*anchors.shape, draft_len, first.shape[-1])
        return torch.cat([first, masks], dim=-2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, context: KVCache,
                attn_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, N, D) of block inputs ``x`` (B, N, D) at ``positions`` (B, N).

        ``context`` holds the context keys/values of every head layer; it is left as it was.
        ``attn_mask`` (B, 1, N, T + N), True = may attend, says which context keys and block keys
        each query sees (bidirectional within its own block)."""
        past = context.length
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, False, context, i)
        context.crop(past)  # the block's keys were appended for the attention only
        return self.norm(x)


# -- folders --------------------------------------------------------------------------------------
def save_drafter(head: DraftHead, folder: str | Path, dtype: torch.dtype | None = None,
                 extra: dict | None = None) -> Path:
    from .loading.checkpoint import atomic_save_tensors, atomic_write_text
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in head.state_dict().items()}
    atomic_save_tensors(state, folder / "model.safetensors", {"format": "pt"})
    config = {"model_type": "quicksilver-drafter", "drafter": dataclasses.asdict(head.spec),
              "target": head.target_config.to_dict()} | (extra or {})
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder


def load_drafter(folder: str | Path, target: Transformer) -> DraftHead:
    """The draft head in ``folder`` for ``target``; its dimensions must match the target's."""
    from .loading.checkpoint import CheckpointError, load_state_dict
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a drafter folder: it has no config.json")
    raw = read_json_object(folder / "config.json", CheckpointError)
    if raw.get("model_type") != "quicksilver-drafter":
        raise CheckpointError(f"{folder}/config.json does not describe a Quicksilver draft head")
    try:
        spec = DrafterSpec.from_dict(raw.get("drafter", {}))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None
    tcfg = target.config
    trained_on = raw.get("target", {})
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "vocab_size"):
        if key in trained_on and trained_on[key] != getattr(tcfg, key):
            raise CheckpointError(f"{folder}: the draft head was trained for a target with {key} = "
                                  f"{trained_on[key]}, this model has {getattr(tcfg, key)}")
    try:
        head = DraftHead(tcfg, spec)
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    state = load_state_dict(folder)
    expected = head.state_dict()
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state)) or sorted(set(state) - set(expected))
        raise CheckpointError(f"{folder}: draft head tensors do not match its config (first: '{missing[0]}')")
    param = next(target.parameters())
    head.load_state_dict({k: v.to(param.dtype) for k, v in state.items()})
    return head.to(device=param.device, dtype=param.dtype).eval()


def export_drafter(source: str | Path, out: str | Path, dtype: torch.dtype = torch.bfloat16) -> int:
    """Copy a trained head (a run's ``best/`` or a checkpoint) to ``out`` as config.json +
    model.safetensors in ``dtype``, without optimizer state; returns its parameter count."""
    from .loading.checkpoint import CheckpointError, load_state_dict
    source, out = Path(source), Path(out)
    raw = read_json_object(source / "config.json", CheckpointError)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_state_dict(source).items()}
    out.mkdir(parents=True, exist_ok=True)
    from .loading.checkpoint import atomic_save_tensors, atomic_write_text
    atomic_save_tensors(state, out / "model.safetensors", {"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(raw, indent=2) + "\n")
    return sum(v.numel() for v in state.values())


def find_drafter(model_folder: str | Path) -> Path | None:
    """The draft head shipped inside a model folder (``<folder>/drafter/``), if there is one."""
    folder = Path(model_folder) / DRAFTER_DIR
    return folder if (folder / "config.json").is_file() else None

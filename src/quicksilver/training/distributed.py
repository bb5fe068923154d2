"""Data-parallel training with PyTorch's own engine: ``torchrun`` + DDP or FSDP2.

``quicksilver train CONFIG`` stays the one entry point.  Under ``torchrun`` (which sets RANK,
WORLD_SIZE and LOCAL_RANK) it joins the process group (NCCL on CUDA, gloo on CPU), wraps the
model, and each rank trains on its own slice of the global batch.  Checkpoints hold full,
unsharded tensors in the same files a single process writes, so they load at any world size.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "none"  # "none" (one process), "ddp" or "fsdp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(name: str) -> torch.device:
    """The device of a one-process run: ``train.device``, where "auto" means CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(strategy: str, device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when started by torchrun with more than one process.

    ``strategy`` is ``train.distributed``: "ddp" or "fsdp".  With one process nothing is wrapped,
    so the same config runs unchanged with or without torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if world <= 1:
        return DistInfo(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no CUDA device is available")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                **({"device_id": device} if use_cuda else {}))
    return DistInfo(rank, world, local_rank, strategy), device


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class Objective(nn.Module):
    """Runs ``fn(model, *args)`` inside ``forward``.

    DDP synchronises gradients and FSDP gathers parameters only through ``forward`` hooks, while
    the losses call ``model.hidden_states`` and ``model.head`` separately; wrapping the loss as
    this module's forward makes every such call go through the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The module the training step calls: the objective, DDP- or FSDP2-wrapped when distributed."""
    objective = Objective(model)
    if not info.enabled:
        return objective
    if info.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in model.layers:
            fully_shard(block)  # one all-gather per block, freed after its forward
        return fully_shard(objective)
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64), e.g. validation sums or a step's loss and flags."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


# -- full (unsharded) state, the same on every world size ---------------------------------------
_PREFIX = "model."


def full_model_state(wrapped: nn.Module, model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """Full CPU tensors keyed as in a plain ``Transformer``.  Collective under FSDP (all ranks call;
    only rank 0 receives the tensors, the others an empty dict)."""
    if info.mode != "fsdp" or not info.enabled:
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len(_PREFIX):]: v for k, v in state.items()}


def full_optimizer_state(wrapped: nn.Module, model: nn.Module, opt: torch.optim.Optimizer,
                         info: DistInfo) -> dict[str, torch.Tensor]:
    """``{param_name::key: tensor}`` (e.g. ``layers.0.mlp.up_proj.weight::exp_avg``), full tensors."""
    if info.mode != "fsdp" or not info.enabled:
        names = {id(p): n for n, p in model.named_parameters()}
        out = {}
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    out[f"{names[id(p)]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return out
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    osd = get_optimizer_state_dict(wrapped, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = {}
    for fqn, entries in osd.get("state", {}).items():  # ranks other than 0 receive nothing
        for key, value in entries.items():
            out[f"{fqn[len(_PREFIX):]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_state(wrapped: nn.Module, model: nn.Module, opt: torch.optim.Optimizer,
                         tensors: dict[str, torch.Tensor], info: DistInfo) -> None:
    """Inverse of :func:`full_optimizer_state`; under FSDP every rank keeps its own shard."""
    if info.mode != "fsdp" or not info.enabled:
        params = dict(model.named_parameters())
        for key, value in tensors.items():
            pname, _, skey = key.partition("::")
            opt.state[params[pname]][skey] = value.to(params[pname].device) if skey != "step" else value
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True)
    osd = get_optimizer_state_dict(wrapped, opt, options=options)  # for the param_groups layout
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pname, _, skey = key.partition("::")
        state.setdefault(_PREFIX + pname, {})[skey] = value
    osd["state"] = state
    set_optimizer_state_dict(wrapped, opt, osd, options=options)

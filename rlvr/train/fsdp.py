"""FSDP2 sharding of the data-parallel learner (``cluster.learner_sharding: fsdp``).

Under DDP every rank holds the whole policy, its gradients and AdamW's moments; under FSDP2
(``torch.distributed.fsdp.fully_shard``) each of M ranks holds 1/M of each, and a layer's
weights are all-gathered just for its forward and backward. That is the path for a policy
that does not fit one device. Three things keep it the update one process takes:

* the gradients are *summed* over the ranks, not averaged (FSDP2's default): the learner already
  divides by the global batch's token or sequence count. ``set_gradient_divide_factor(1)`` alone
  asks for a pre-multiplied sum (``ReduceOp.PREMUL_SUM``), which gloo does not have ("Cannot use
  ReduceOp.PREMUL_SUM with Gloo"), so the reduction is forced to a plain SUM on every backend;
* every forward is a collective (each layer all-gathers its weights), so every rank runs the same
  number of forwards: the learner pads its micro-batches to the ranks' maximum (the plan's
  ``lockstep``, rlvr.train.parallel.Sharded) and uses the flat forward (the shared-prefix forward calls the model a number of
  times that depends on the micro-batch's rows; the config turns it off under FSDP);
* whatever needs the whole model (weights for the engine, checkpoints, the final model) is a
  collective gather of the full state that every rank joins; rank 0 receives it on the CPU.

Checkpoints keep the single-process layout: the model's full ``state_dict`` and the optimiser's
``state_dict`` keyed by parameter index, so DDP, FSDP and single-process checkpoints load into one
another.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

# full tensors, gathered to the CPU of rank 0 only (the other ranks get {})
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# every rank passes the full state; each keeps its own shard of it
SCATTER = StateDictOptions(full_state_dict=True)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, mesh) -> None:
    """``fully_shard`` every transformer block (the classes a HF model lists in ``_no_split_modules``),
    then the rest (embeddings, final norm, LM head) as the root unit; gradients summed over ranks."""
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"cluster.learner_sharding=fsdp: {type(model).__name__} names no transformer block class "
                         "(_no_split_modules), so there is nothing to shard layer by layer")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # a sum: the learner normalises by the global batch itself
            m.set_force_sum_reduction_for_comms(True)  # ReduceOp.SUM (gloo lacks PREMUL_SUM), then / 1


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full ``state_dict`` on rank 0's CPU ({} elsewhere). Collective: every rank calls it."""
    return get_model_state_dict(model, options=GATHER)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full ``state_dict`` (every rank passes the same one; it is left as it was). Collective."""
    set_model_state_dict(model, dict(state), options=SCATTER)  # (the load puts its DTensors into the dict it gets)


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's full state on rank 0's CPU ({} elsewhere), in ``opt.state_dict()``'s layout:
    parameters by index in ``model.parameters()`` order, as a single process saves it. Collective."""
    state = get_optimizer_state_dict(model, opt, options=GATHER)
    if not state:
        return {}
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return {"state": {index[name]: s for name, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in state["param_groups"]]}


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimiser state in ``opt.state_dict()``'s layout (every rank passes the same one; it is
    left as it was). Collective."""
    names = [name for name, _ in model.named_parameters()]
    by_name = {"state": {names[int(i)]: dict(s) for i, s in state["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=SCATTER)

"""What the learner and the critic share: a model with its AdamW and learning-rate schedule, the
parallel plan that prepared the model and reduces its gradients, and their state in one layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.config import OptimConfig
from rlvr.train.parallel import SINGLE, Single


class Optimised:
    """AdamW at ``lr`` (linear warm-up over ``warmup_steps``) on ``model`` as ``plan`` prepared it.

    The plan wraps the model *before* the optimiser is built (FSDP's optimiser holds the shards)."""

    def __init__(self, model, lr: float, optim: OptimConfig, warmup_steps: int = 0, plan: Single = SINGLE):
        self.parallel = plan
        self.model = plan.prepare(model)
        # fused: one kernel per step for all tensors (the per-tensor loop costs ~15% of a tiny model's step)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=optim.weight_decay,
                                     betas=optim.betas, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
        self.grad_clip = optim.grad_clip

    def apply_gradients(self) -> Tensor:
        """Reduce the accumulated gradients over the ranks, clip their global norm, take the optimiser
        and schedule step, clear them; returns the norm before clipping."""
        self.parallel.reduce_gradients(self.model.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return grad_norm

    def state_dict(self) -> dict[str, Any]:
        """Model (a LoRA policy: its adapter), optimiser and schedule, full and on the CPU (under FSDP a
        gather every rank joins; rank 0 receives it, the others get empty dicts)."""
        return {"model": self.parallel.model_state(self.model),
                "optim": self.parallel.optimizer_state(self.model, self.opt),
                "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state_dict``'s layout (under FSDP every rank passes the same full state)."""
        self.parallel.load_model_state(self.model, state["model"])
        self.parallel.load_optimizer_state(self.model, self.opt, state["optim"])
        self.sched.load_state_dict(state["sched"])

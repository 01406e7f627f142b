"""A data-parallel learner: M ranks on one torch.distributed process group (gloo on CPU, NCCL on GPU).

The group builds every rank's policy side (``rlvr.components.build_policy_side``) after the
process group is up, with the rank's parallel plan (rlvr.train.parallel): rank 0 in the trainer's
process, ranks 1..M-1 as Ray actors (``LearnerRank``), each from the model directory and the run's
config. A step splits the batch by whole groups, an equal number per rank (``shard_by_groups``),
and every rank steps on its shard with the global batch's loss normalisers and the gradients
summed over ranks (the DDP plan), so the M ranks take
the update one process takes on the whole batch, up to float summation order, and stay identical.
Everything else the loop asks of the policy side (log-probs for a KL in the reward, the critic's
values, checkpoints, weight sync) reads rank 0, which holds the same weights as every rank.

Fail loudly, never hang: every remote call is awaited at most ``cluster.timeout_s`` past rank 0's
own share of the work (the ranks run in lockstep with it through the collectives), the
collectives carry the same deadline, and a rank that dies, raises or misses its deadline becomes
a ``LearnerRankError`` naming the rank and what it was doing. The group is then unusable: the
run stops (a half-applied update cannot be continued).

With ``cluster.learner_sharding: fsdp`` (rlvr.train.fsdp) each rank holds a shard of the policy
and the reference instead of a copy, so rank 0 cannot read or run them alone: the log-probs of a
KL in the reward, the weights for the engine, checkpoints and the final model are collectives that
every rank joins (``policy_and_reference_logp``, ``policy_weights``, ``state_dict``,
``load_state_dict``, ``save_final``). The loop asks the group for these under DDP too, and
gets what rank 0 holds.

With ``cluster.learner_ranks == 1`` the group is the plain single-process learner: no Ray, no
process group, the same numbers.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from rlvr import lora
from rlvr.algorithms import AdvantageInputs
from rlvr.cluster.runtime import ACTOR_RUNTIME_ENV, cpus_each, free_port
from rlvr.config import TrainConfig
from rlvr.train.critic import Critic
from rlvr.train.learner import Learner, RLBatch
from rlvr.train.parallel import plan_for
from rlvr.train.side import PolicySide, build_policy_side

# After rank 0 failed in a collective, how long to wait for Ray to report which peer died (a
# killed actor is reported within about a second); a peer still silent after it is named as stuck.
FAILURE_REPORT_S = 10.0


class LearnerRankError(RuntimeError):
    """A learner rank died, raised or missed its deadline; the run cannot continue its update."""

    def __init__(self, rank: int, doing: str, cause: str):
        self.rank, self.doing = rank, doing
        super().__init__(f"learner rank {rank} failed during the {doing}: {cause}. The run stopped "
                         "(the ranks' models may now differ; continue from the last checkpoint).")


def group_bounds(batch: RLBatch, ranks: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of ``ranks`` shards holding whole groups, the same number each.
    Groups come from ``batch.group_ids`` [B]: completions of one prompt share an id, in adjacent rows
    (as build_batch packs them)."""
    if batch.group_ids is None:
        raise ValueError("shard_by_groups: the batch has no group structure (RLBatch.group_ids)")
    g = batch.group_ids
    starts = [0] + (torch.nonzero(g[1:] != g[:-1]).flatten() + 1).tolist()
    if len(starts) != len(torch.unique(g)):
        raise ValueError("shard_by_groups: a group's rows are not adjacent, so it cannot go to one rank whole")
    if len(starts) % ranks:
        raise ValueError(f"shard_by_groups: {len(starts)} groups do not split evenly over {ranks} learner ranks "
                         "(cluster.learner_ranks must divide the groups per step)")
    per = len(starts) // ranks
    edges = starts[::per] + [len(g)]
    return list(zip(edges[:-1], edges[1:]))


def shard_by_groups(batch: RLBatch, ranks: int) -> list[RLBatch]:
    """The batch split into ``ranks`` shards of whole groups (equal group counts, contiguous rows).

    Shards keep the full batch's padded width: Dr.GRPO's aggregation without a fixed
    ``loss_agg_norm`` divides by that width, so a narrower shard would weigh its rows differently."""
    return [batch.slice(a, b) for a, b in group_bounds(batch, ranks)]


def shard_advantage_inputs(inp: AdvantageInputs, bounds: list[tuple[int, int]]) -> list[AdvantageInputs]:
    """``inp``'s rows cut at the same row ranges as the batch (PPO's critic step takes both)."""
    def rows(a: int, b: int) -> AdvantageInputs:
        return AdvantageInputs(**{f.name: None if getattr(inp, f.name) is None else getattr(inp, f.name)[a:b]
                                  for f in fields(inp)})

    return [rows(a, b) for a, b in bounds]


def combine_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One dict from every rank's metrics: the maximum of ``*_max`` (the log-prob parity gate reads
    ``logp_diff_max``), the minimum of ``*_min``, the mean of the rest (ranks hold equal group counts)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m in per_rank for k in m):
        values = [m[key] for m in per_rank if key in m]
        if key.endswith("_max"):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def side_state(side: PolicySide) -> dict[str, Any]:
    """The policy side's state in the run's one layout: ``{"learner": Learner.state_dict(), "critic":
    Critic.state_dict()}`` (no critic key without one). Under FSDP a gather every rank joins."""
    state = {"learner": side.learner.state_dict()}
    if side.critic is not None:
        state["critic"] = side.critic.state_dict()
    return state


def load_side_state(side: PolicySide, state: dict[str, Any]) -> None:
    side.learner.load_state_dict(state["learner"])
    if side.critic is not None:
        side.critic.load_state_dict(state["critic"])


class LearnerRank:
    """Learner rank ``rank`` >= 1, run as a Ray actor: its own policy side, built from the model
    directory and the run's config (plain data: the validated config's dump) on ``device`` once it
    joined the process group (``join``), with the rank's parallel plan."""

    def __init__(self, rank: int, world: int, cfg_data: dict[str, Any], model_dir: str, threads: int, device: str):
        from transformers import AutoConfig

        torch.set_num_threads(threads)
        self.cfg = TrainConfig.model_validate(cfg_data)
        self.rank, self.world, self.model_dir, self.device = rank, world, model_dir, device
        AutoConfig.from_pretrained(model_dir)  # an unreadable model fails here, named, before any collective
        self.side: PolicySide | None = None

    def pid(self) -> int:
        return os.getpid()

    def join(self, backend: str, init_method: str, timeout_s: float) -> None:
        """Join the process group, then build this rank's policy side with its plan."""
        self.side = _join_and_build(self.cfg, self.model_dir, self.device, self.rank, self.world, backend,
                                    init_method, timeout_s)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_side_state(self.side, state)

    def state_dict(self) -> dict[str, Any]:
        return side_state(self.side)

    def gather_model(self) -> None:  # FSDP: this rank's part of a gather of the policy's weights
        self.side.learner.parallel.model_state(self.side.learner.model)

    def policy_and_reference_logp(self, shard: RLBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.side.learner.policy_and_reference_logp(shard)

    def policy_logp(self, shard: RLBatch) -> torch.Tensor:
        return self.side.learner.policy_logp(shard)

    def step(self, shard: RLBatch) -> dict[str, float]:
        return self.side.learner.step(shard)

    def critic_step(self, shard: RLBatch, inp: AdvantageInputs) -> dict[str, float]:
        return self.side.critic.step(shard, inp)


def _join_and_build(cfg: TrainConfig, model_dir: str, device: str, rank: int, world: int, backend: str,
                    init_method: str, timeout_s: float) -> PolicySide:
    """Rank ``rank`` joins the process group and builds its policy side with its plan (every rank at once:
    an FSDP plan's device mesh is made collectively). Seeded as the trainer seeds before it builds."""
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    plan = plan_for(world, cfg.cluster.learner_sharding, device)
    if rank:
        torch.manual_seed(cfg.train.seed)  # (rank 0: the caller seeded; broadcast_state equalises anyway)
    return build_policy_side(cfg, model_dir, device, plan)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _describe(exc: BaseException) -> str:
    """What went wrong on a rank, in one line."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):  # the rank's own code raised
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"it raised {type(cause).__name__}: {_last_line(str(cause))}"
    if isinstance(exc, rex.RayActorError) and exc.actor_init_failed:  # its __init__ raised
        return f"it could not be built: {_last_line(str(exc))}"
    if isinstance(exc, rex.RayActorError):
        return "its process died (killed, out of memory, or crashed)"
    return f"{type(exc).__name__}: {_last_line(str(exc))}"


class LearnerGroup:
    """M data-parallel learner ranks behind the single learner's interface (see the module docstring).

    Builds every rank's policy side: rank 0's here on ``device`` (``self.side``: ``learner`` and
    ``critic``), the others on Ray actors. ``cfg.cluster`` gives the rank count, resources and
    deadline. Ray must already be initialised when ``learner_ranks > 1``. The caller seeds torch
    first (LoRA's and the critic head's initialisation draw from it)."""

    def __init__(self, cfg: TrainConfig, model_dir: str, device: str = "cpu"):
        self.world, self.timeout_s = cfg.cluster.learner_ranks, cfg.cluster.timeout_s
        self.fsdp = self.world > 1 and cfg.cluster.learner_sharding == "fsdp"
        self._ranks: list[Any] = []  # actor handles of ranks 1..M-1
        self._pids = [os.getpid()]
        self._failure: LearnerRankError | None = None
        self._joined = self._closed = False
        if self.world == 1:
            self.side = build_policy_side(cfg, model_dir, device)
            return
        import ray
        import torch.distributed as dist

        if not ray.is_initialized():
            raise RuntimeError("LearnerGroup: cluster.learner_ranks > 1 needs Ray initialised first "
                               "(rlvr.cluster.runtime.connect)")
        if dist.is_initialized():
            raise RuntimeError("LearnerGroup: this process already belongs to a torch.distributed process group")
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl" and cfg.cluster.gpus_per_rank <= 0:
            raise ValueError("cluster.gpus_per_rank=0, but the trainer learns on a GPU: every learner rank needs one")
        # cpus_per_rank unset: an equal share of the cluster's CPUs (what rlvr.cluster.runtime checked)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        threads = cfg.train.threads or cpus_each(self.world, cfg.cluster.cpus_per_rank, cpus)
        # num_cpus=0: workers and ranks are colocated and the runtime checked the resources itself
        actor = ray.remote(LearnerRank).options(num_cpus=0, num_gpus=cfg.cluster.gpus_per_rank, max_restarts=0,
                                                runtime_env=ACTOR_RUNTIME_ENV)  # not niced below rank 0
        cfg_data = cfg.model_dump(mode="json", by_alias=True)
        try:
            self._ranks = [actor.remote(r, self.world, cfg_data, model_dir, threads, torch.device(device).type)
                           for r in range(1, self.world)]
            self._pids += self._gather(self._send("pid"), "init")  # started (or failed) by now
            init_method = f"tcp://{ray.util.get_node_ip_address()}:{free_port()}"
            calls = self._send("join", backend, init_method, self.timeout_s)
            self._joined = True  # (from here on, close() leaves the process group if it was joined)
            self.side = self._here(lambda: _join_and_build(cfg, model_dir, device, 0, self.world, backend,
                                                           init_method, self.timeout_s), calls, "init")
            self._gather(calls, "init")
        except BaseException:
            self.close()
            raise

    @property
    def learner(self) -> Learner:
        return self.side.learner

    @property
    def critic(self) -> Critic | None:
        return self.side.critic

    # --- the learner's interface ------------------------------------------------------------

    def step(self, batch: RLBatch) -> dict[str, float]:
        """The policy's optimiser pass(es) on ``batch`` over every rank; metrics combined over ranks."""
        if self.world == 1:
            return self.learner.step(batch)
        self._check_usable()
        self.learner.check_lengths(batch)  # the whole batch, before any rank waits in a collective
        return self.step_shards(shard_by_groups(batch, self.world))

    def step_shards(self, shards: list[RLBatch]) -> dict[str, float]:
        """Rank r steps on ``shards[r]`` (whole groups, the full padded width; shards may differ in
        size: the normalisers are all-reduced, and under FSDP the ranks pad to equal micro-batch counts)."""
        self._check_usable()
        calls = self._send("step", per_rank=shards[1:])
        mine = self._here(lambda: self.learner.step(shards[0]), calls, "policy step")
        return combine_metrics([mine] + self._gather(calls, "policy step"))

    def critic_step(self, batch: RLBatch, adv_in: AdvantageInputs) -> dict[str, float]:
        """PPO's critic regression on ``batch`` over every rank (``adv_in`` cut at the same rows)."""
        if self.critic is None:
            raise ValueError("critic_step: this learner group has no critic (algorithm.needs_critic is false)")
        if self.world == 1:
            return self.critic.step(batch, adv_in)
        self._check_usable()
        bounds = group_bounds(batch, self.world)
        shards = [batch.slice(a, b) for a, b in bounds]
        inputs = shard_advantage_inputs(adv_in, bounds)
        calls = self._send("critic_step", per_rank=list(zip(shards[1:], inputs[1:])))
        mine = self._here(lambda: self.critic.step(shards[0], inputs[0]), calls, "critic step")
        return combine_metrics([mine] + self._gather(calls, "critic step"))

    def policy_and_reference_logp(self, batch: RLBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``Learner.policy_and_reference_logp`` of the whole batch (the KL in the reward). Under FSDP
        every rank runs its shard of whole groups (the forwards are collectives); else rank 0 alone."""
        if not self.fsdp:
            return self.learner.policy_and_reference_logp(batch)
        parts = self._forward_on_shards("policy_and_reference_logp", batch, "KL log-probs")
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # [B, T] each

    def policy_logp(self, batch: RLBatch) -> torch.Tensor:
        """``Learner.policy_logp`` of the whole batch (the start-up parity probe); sharded like
        ``policy_and_reference_logp`` under FSDP."""
        if not self.fsdp:
            return self.learner.policy_logp(batch)
        return torch.cat(self._forward_on_shards("policy_logp", batch, "probe log-probs"))  # [B, T]

    def _forward_on_shards(self, method: str, batch: RLBatch, doing: str) -> list[Any]:
        """Under FSDP: every rank runs the learner's no-grad ``method`` on its shard of whole groups (the
        forwards are collectives); the shards' results in rank order."""
        self._check_usable()
        shards = shard_by_groups(batch, self.world)
        calls = self._send(method, per_rank=shards[1:])
        mine = self._here(lambda: getattr(self.learner, method)(shards[0]), calls, doing)
        return [mine] + self._gather(calls, doing)

    def values(self, batch: RLBatch) -> torch.Tensor:
        """PPO: the critic's V(s_t) [B, T] at sampling time (rank 0's critic, which every rank equals)."""
        return self.critic.values(batch)

    def policy_weights(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of the policy as the engine loads it (LoRA merged), rank 0's tensors (read
        only). Under FSDP every rank joins a gather of the full weights, which arrive on rank 0's CPU."""
        if not self.fsdp:
            return self.learner.weights()
        return self._everywhere("weight gather", self.learner.weights, "gather_model")

    def state_dict(self) -> dict[str, Any]:
        """The policy side's state on the CPU, in the run's one layout (``side_state``): what a
        checkpoint holds and what ``broadcast_state`` sends; rank 0's own, or under FSDP gathered from
        every rank's shards. DDP, FSDP and one process read and write the same layout."""
        if not self.fsdp:
            return side_state(self.side)
        return self._everywhere("state gather", lambda: side_state(self.side), "state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``state_dict``'s layout into rank 0 (``broadcast_state`` then equalises the other
        ranks), or under FSDP into every rank's shards at once."""
        if not self.fsdp:
            load_side_state(self.side, state)
            return
        import ray

        ref = ray.put(state)  # one copy, read by every rank
        self._everywhere("state load", lambda: load_side_state(self.side, state), "load_state_dict", ref)

    def save_final(self, final_dir: Path, adapter_dir: Path) -> None:
        """The trained policy as a plain HF model directory (LoRA: merged, and the adapter alone in
        ``adapter_dir``), written by rank 0; under FSDP from the gathered full weights."""
        policy = self.learner.model
        if not self.fsdp:
            if lora.is_lora(policy):
                policy.save_pretrained(adapter_dir)  # the adapter alone, loadable with peft on `model`
            lora.save_merged(policy, final_dir)  # a plain HF model (merged into a copy with LoRA)
            return
        state = self._everywhere("final weight gather", lambda: self.learner.parallel.model_state(policy), "gather_model")
        policy.save_pretrained(final_dir, state_dict=state, safe_serialization=True)

    def broadcast_state(self) -> None:
        """Rank 0's policy-side state to every rank, through the Ray object store: after construction
        and after a resume, so all ranks start equal. Nothing to do under FSDP: the ranks sharded the
        same weights, and a resume loads on every rank."""
        if self.world == 1 or self.fsdp:
            return
        import ray

        self._check_usable()
        state = ray.put(self.state_dict())  # one copy, read by every rank
        self._gather(self._send("load_state_dict", state), "state broadcast")

    def rank_state(self, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s policy-side state (what ``broadcast_state`` sends), on the CPU: for checks."""
        if rank == 0:
            return self.state_dict()
        if self.fsdp:
            raise ValueError("rank_state: under FSDP the ranks hold shards of one state, not copies (state_dict)")
        self._check_usable()
        return self._gather({rank: self._ranks[rank - 1].state_dict.remote()}, "state read")[0]

    def pids(self) -> list[int]:
        """Process id of every rank (rank 0 is this process)."""
        return list(self._pids)

    def close(self) -> None:
        """Stop the rank actors and leave the process group (read what you need before closing: rank 0's
        learner keeps its plan, and under FSDP it holds only its shard)."""
        if self._ranks:
            import ray

            for actor in self._ranks:
                ray.kill(actor)
            self._ranks = []
        if self._joined:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._joined = False
        self._closed = True

    # --- calls, deadlines, failures -------------------------------------------------------

    def _everywhere(self, doing: str, work, method: str, *args: Any) -> Any:
        """A collective: ``method(*args)`` on ranks 1..M-1 while rank 0 runs ``work``; rank 0's answer."""
        self._check_usable()
        calls = self._send(method, *args)
        mine = self._here(work, calls, doing)
        self._gather(calls, doing)
        return mine

    def _send(self, method: str, *args: Any, per_rank: list[Any] | None = None) -> dict[int, Any]:
        """``method`` on every rank 1..M-1, with ``args`` or with ``per_rank[r - 1]`` (a tuple is unpacked)."""
        calls = {}
        for r, actor in enumerate(self._ranks, 1):
            own = per_rank[r - 1] if per_rank is not None else args
            calls[r] = getattr(actor, method).remote(*(own if isinstance(own, tuple) else (own,)))
        return calls

    def _gather(self, calls: dict[int, Any], doing: str, deadline: float | None = None) -> list[Any]:
        """The ranks' answers in rank order, awaited until ``deadline`` (default: ``timeout_s`` from
        now); the first rank to fail (die, raise) or miss the deadline fails the group."""
        import ray

        deadline = time.monotonic() + self.timeout_s if deadline is None else deadline
        pending = {ref: r for r, ref in calls.items()}
        answers: dict[int, Any] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self._fail(min(pending.values()), doing, f"no answer within cluster.timeout_s={self.timeout_s:g}s")
            r = pending.pop(ready[0])
            try:
                answers[r] = ray.get(ready[0], timeout=self.timeout_s)
            except Exception as exc:
                self._fail(r, doing, _describe(exc), exc)
        return [answers[r] for r in sorted(answers)]

    def _here(self, work, calls: dict[int, Any], doing: str) -> Any:
        """Rank 0's share of ``doing``. Should it fail (a collective whose peer died, or missed the
        deadline because a peer is stuck), the error names the peer that Ray reports dead or that
        has not answered after a short wait; only when every peer finished is rank 0 itself named."""
        try:
            return work()
        except Exception as exc:
            self._gather(calls, doing, time.monotonic() + min(self.timeout_s, FAILURE_REPORT_S))
            self._fail(0, doing, f"{type(exc).__name__}: {_last_line(str(exc))}", exc)

    def _fail(self, rank: int, doing: str, cause: str, exc: BaseException | None = None) -> None:
        self._failure = LearnerRankError(rank, doing, cause)
        raise self._failure from exc

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("LearnerGroup: used after close()")

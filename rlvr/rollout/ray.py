"""Rollout workers as Ray actors: each owns one engine (vLLM or HF) and its own verifier pool.

The driver decides everything that shapes a rollout: which rows, and the seed of every group
(``rollouts.types.prompt_seeds``: the rule every engine applies to a seeded call in one process).
Workers receive that as a ``DrawRequest`` (plain data) and return their groups; the driver puts
them back in request order. So a run's draw requests do not depend on the number of workers,
and with ``cluster.batch_invariant`` (each group generated alone) neither do the token ids.

New weights reach the workers through the transport ``cluster.weight_sync`` names, built from the
registry of transports (rlvr.rollout.weight_sync.TRANSPORTS): one packed buffer in shared memory or
the object store, or a NCCL broadcast from the trainer's GPU into every engine (rlvr.rollout.nccl).

Every call has the deadline ``cluster.timeout_s``. A worker that dies (killed, out of memory)
is started again, given the weights the others sample with, and its groups are drawn again
with the same seeds; ``rollout_worker_restarts`` counts it. A worker that misses its deadline
stops the run with an error naming it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.cluster.runtime import (
    ACTOR_RUNTIME_ENV,
    ClusterError,
    ClusterInfo,
    cpus_each,
    keep_freed_memory,
    pinned_cores,
)
from rlvr.config import TrainConfig
from rlvr.rollout.base import Drawn
from rlvr.rollout.nccl import NcclSync, choose_transport
from rlvr.rollout.weight_sync import TRANSPORTS, Packed, WeightSync
from rollouts import SamplingConfig


@dataclass
class DrawRequest:
    """Groups for one worker: the rows, one seed per row, and how to sample (``seed`` unset)."""

    rows: list[dict[str, Any]]
    seeds: list[int] | None
    sampling: SamplingConfig
    batch_invariant: bool = False


class RolloutWorker:
    """What runs inside one actor: the in-process rollouts (engine, rubric, scoring pool) of
    rlvr.rollout.local, fed by requests, plus the engine's end of the weight sync."""

    def __init__(self, cfg: TrainConfig, model_dir: str, index: int, threads: int, cores: str | None,
                 transport: str = "shm", pin: bool = False):
        from rlvr.components import build_rubric
        from rlvr.rollout.local import LocalRollouts

        if cores is not None:  # vLLM's CPU backend pins its OpenMP threads: keep workers on their own cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores
        if pin and cores is not None:  # cluster.pin_cores: this process on its own cores (the learner has the rest)
            os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
        torch.set_num_threads(threads)
        keep_freed_memory()  # an actor that only generates would hand its KV cache back to the kernel after every draw
        self.index, self.transport = index, transport
        self.local = LocalRollouts(cfg, model_dir, build_rubric(cfg), threads, in_actor=True,
                                   engine_extra=TRANSPORTS[transport].engine_kwargs())
        self.receivers: dict[str, WeightSync] = {}  # the engine's end of each transport that sent to it
        self.version = 0  # of the weights the engine holds (0: the model directory's)

    def pid(self) -> int:
        return os.getpid()

    def draw(self, req: DrawRequest) -> Drawn:
        if not req.batch_invariant:
            return self.local.generate_and_score(req.rows, dataclasses.replace(req.sampling, seeds=req.seeds))
        groups, scores, timings = [], [], {}
        for i, row in enumerate(req.rows):  # each group alone: its numbers cannot depend on its neighbours
            seeds = None if req.seeds is None else [req.seeds[i]]
            g, s, t = self.local.generate_and_score([row], dataclasses.replace(req.sampling, seeds=seeds))
            groups += g
            scores += s
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
        return groups, scores, timings

    def evaluate(self, rows: list[dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, float]:
        return self.local.evaluate(rows, **kwargs)

    def _receiver(self, transport: str):
        if transport not in self.receivers:
            self.receivers[transport] = TRANSPORTS[transport]()
        return self.receivers[transport]

    def load_weights(self, packed: Packed) -> float:
        """A host transport's payload (shared memory, object store) into the engine; the load's seconds."""
        seconds = self._receiver(packed.transport).load_into(self.local.engine, packed)
        self.version = self.local.version = packed.version
        return seconds

    # the engine's end of a NCCL round (rlvr.rollout.nccl.NcclSync), each called by the trainer on every worker
    def nccl_info(self) -> dict[str, Any]:
        return self._nccl().info(self.local.engine)

    def nccl_join(self, init_info: dict[str, Any]) -> None:
        self._nccl().join(self.local.engine, init_info)

    def nccl_begin(self) -> None:
        self._nccl().begin(self.local.engine)

    def nccl_receive(self, update_info: dict[str, Any]) -> float:
        return self._nccl().load_into(self.local.engine, update_info)

    def nccl_end(self) -> float:
        return self._nccl().end(self.local.engine)

    def nccl_leave(self) -> None:
        self._nccl().leave(self.local.engine)

    def _nccl(self) -> NcclSync:
        if self.transport != NcclSync.name:
            raise RuntimeError(f"rollout worker {self.index}: its engine has no NCCL receiver (transport "
                               f"{self.transport})")
        return self._receiver(NcclSync.name)

    def sleep(self) -> None:
        self.local.sleep()

    def close(self) -> None:
        self.local.close()
        for receiver in self.receivers.values():
            receiver.close()


def split_evenly(n: int, parts: int) -> list[range]:
    """``range(n)`` in ``parts`` contiguous pieces whose sizes differ by at most one (empty pieces dropped)."""
    bounds = [n * p // parts for p in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


class RayRollouts:
    """``Rollouts`` on ``cluster.rollout_workers`` actors; also the ``WorkerPool`` its weight sync sends through."""

    def __init__(self, cfg: TrainConfig, model_dir: str, info: ClusterInfo):
        import ray

        c = cfg.cluster
        self.cfg, self.model_dir, self.timeout = cfg, model_dir, c.timeout_s
        self.pinned = pinned_cores(c.rollout_workers, cfg.train.threads)[0] if c.pin_cores else None
        if self.pinned is not None:  # each worker computes on its own cores only
            self.threads = cfg.engine.threads or len(self.pinned[0])
        else:
            self.threads = cfg.engine.threads or cfg.train.threads or cpus_each(c.rollout_workers, c.cpus_per_worker,
                                                                                 info.cpus)
        self.transport = choose_transport(cfg, info.nodes)  # a wrong explicit choice fails here, before any engine
        self.sync: WeightSync | None = None
        self.nodes, self.local = info.nodes, c.address == "local"
        self.restarts, self.version = 0, 0
        self.last_requests: list[DrawRequest] = []  # the latest draw's requests, one per worker (tests, debugging)
        self._remote = ray.remote(RolloutWorker)
        self.workers: list[Any] = []
        self.pids: list[int] = []
        try:  # a worker that fails to start, or a transport that cannot open, leaves no actor behind
            for i in range(c.rollout_workers):
                self.workers.append(self._spawn(i))
            self.pids = self._gather({i: w.pid.remote() for i, w in enumerate(self.workers)}, "starting its engine",
                                     retry=None)
            # NCCL joins every worker into its group here (or, under auto, hands over to a host transport)
            self.sync = TRANSPORTS[self.transport](self).open()
        except BaseException:
            self.close()
            raise
        self.transport = self.sync.name

    def _spawn(self, index: int):
        cores = None
        if self.pinned is not None:
            cores = ",".join(str(c) for c in self.pinned[index])
        elif self.local and not torch.cuda.is_available():  # one node: worker i gets its own slice of the cores
            n = os.cpu_count() or 1
            first = (index * self.threads) % n
            cores = ",".join(str((first + k) % n) for k in range(min(self.threads, n)))
        # train.async.in_flight: a weight load reaches the actor while it draws (on a second thread), and the
        # engine takes it between two decode steps
        concurrency = 2 if self.cfg.train.async_.enabled and self.cfg.train.async_.in_flight else 1
        return self._remote.options(num_cpus=0, num_gpus=self.cfg.cluster.gpus_per_worker, name=None, max_restarts=0,
                                    max_concurrency=concurrency,
                                    runtime_env=ACTOR_RUNTIME_ENV).remote(self.cfg, self.model_dir, index, self.threads,
                                                                      cores, self.transport, self.pinned is not None)

    def _restart(self, index: int, doing: str) -> None:
        import ray

        self.restarts += 1
        if self.restarts > self.cfg.cluster.max_worker_restarts:
            raise ClusterError(f"rollout worker {index} died while {doing}, and {self.restarts - 1} restarts "
                               f"already used cluster.max_worker_restarts={self.cfg.cluster.max_worker_restarts}")
        print(f"rollout worker {index} died while {doing}; restarting it (restart {self.restarts})")
        try:
            ray.kill(self.workers[index], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[index] = worker = self._spawn(index)
        self.pids[index] = ray.get(worker.pid.remote(), timeout=self.timeout)
        if self.sync is not None:  # the weights the other workers sample with
            self.sync.resend(index)

    def _gather(self, refs: dict[int, Any], doing: str, retry: Callable[[int], Any] | None) -> list[Any]:
        """Results per worker index, in index order. A dead worker is restarted and ``retry(i)`` resubmits
        its call (``retry=None``: no restart); a missed deadline is a ClusterError naming the worker."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        pending = {ref: i for i, ref in refs.items()}
        out: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted(pending.values())
                raise ClusterError(f"rollout worker{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} did not "
                                   f"finish {doing} within cluster.timeout_s={self.timeout:g}")
            i = pending.pop(ready[0])
            try:
                out[i] = ray.get(ready[0])
            except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
                if retry is None:
                    raise ClusterError(f"rollout worker {i} died while {doing}: {exc}") from None
                self._restart(i, doing)
                pending[retry(i)] = i
                deadline = time.monotonic() + self.timeout
        return [out[i] for i in sorted(out)]

    def call_all(self, call: Callable[[Any], Any], doing: str) -> list[Any]:
        """``call(actor)`` on every worker, results in worker order; a dead worker is restarted and called again."""

        def submit(w: int):
            return call(self.workers[w])

        return self._gather({w: submit(w) for w in range(len(self.workers))}, doing, submit)

    # -- what the loop calls ------------------------------------------------------------
    def generate_and_score(self, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig) -> Drawn:
        seeds = sampling.prompt_seeds(len(rows))
        base = dataclasses.replace(sampling, seed=None)
        parts = split_evenly(len(rows), len(self.workers))

        def submit(w: int):
            part = parts[w]
            request = DrawRequest([dict(rows[i]) for i in part], None if seeds is None else seeds[part.start:part.stop],
                                  base, self.cfg.cluster.batch_invariant)
            self.last_requests.append(request)
            return self.workers[w].draw.remote(request)

        self.last_requests = []
        refs = {w: submit(w) for w in range(len(parts))}
        results = self._gather(refs, f"drawing {len(rows)} groups", submit)
        groups = [g for r in results for g in r[0]]
        scores = [s for r in results for s in r[1]]
        timings = {k: max(r[2][k] for r in results) for k in results[0][2]}  # the slowest worker sets the pace
        return groups, scores, timings

    def evaluate(self, rows: list[dict[str, Any]], **kwargs) -> dict[str, float]:
        def submit(w: int):
            return self.workers[w].evaluate.remote(rows, kwargs)

        return self._gather({0: submit(0)}, f"evaluating {len(rows)} prompts", submit)[0]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int | None = None) -> dict[str, float]:
        self.version = self.version + 1 if version is None else version
        return self.sync.push(named_tensors, self.version)

    def sleep(self) -> None:
        self._gather({w: a.sleep.remote() for w, a in enumerate(self.workers)}, "going to sleep", retry=None)

    def stats(self) -> dict[str, float]:
        return {"rollout_worker_restarts": float(self.restarts)}

    def close(self) -> None:
        import ray

        if self.sync is not None:  # the learner's end: the NCCL group's, or the host transport's buffer
            self.sync.close()
        for worker in self.workers:
            try:
                ray.get(worker.close.remote(), timeout=30)
            except Exception:  # a worker already down has nothing to close
                pass
            ray.kill(worker, no_restart=True)

"""Rollout workers as Ray actors: each owns one engine (vLLM or HF) and its own verifier pool.

The driver decides everything that shapes a rollout: which rows, and the seed of every group
(``rollouts.types.prompt_seeds``: the rule every engine applies to a seeded call in one process).
Workers receive that as a ``DrawRequest`` (plain data) and return their groups; the driver puts
them back in request order. So a run's draw requests do not depend on the number of workers,
and with ``cluster.batch_invariant`` (each group generated alone) neither do the token ids.

New weights reach the workers through ``cluster.weight_sync``: one packed buffer in shared memory or
the object store (rlvr.cluster.weight_sync), or a NCCL broadcast from the trainer's GPU into every
engine (rlvr.cluster.nccl_sync).

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

from rlvr.cluster.nccl_sync import NcclReceiver, NcclSender, choose_transport, host_transport
from rlvr.cluster.nccl_sync import engine_kwargs as transport_engine_kwargs
from rlvr.cluster.runtime import ACTOR_RUNTIME_ENV, ClusterError, ClusterInfo, cpus_each, keep_freed_memory
from rlvr.cluster.weight_sync import Packed, WeightReceiver, WeightSender
from rlvr.config import TrainConfig
from rollouts import Group, SamplingConfig
from verifiers import Score

Drawn = tuple[list[Group], list[list[Score]], dict[str, float]]


@dataclass
class DrawRequest:
    """Groups for one worker: the rows, one seed per row, and how to sample (``seed`` unset)."""

    rows: list[dict[str, Any]]
    seeds: list[int] | None
    sampling: SamplingConfig
    batch_invariant: bool = False


class RolloutWorker:
    """What runs inside one actor: the in-process rollouts (engine, rubric, scoring pool) of
    rlvr.rollout_backends, fed by requests, plus the receiving end of the weight sync."""

    def __init__(self, cfg: TrainConfig, model_dir: str, index: int, threads: int, cores: str | None,
                 transport: str = "shm"):
        from rlvr.components import build_rubric
        from rlvr.rollout_backends import LocalRollouts

        if cores is not None:  # vLLM's CPU backend pins its OpenMP threads: keep workers on their own cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores
        torch.set_num_threads(threads)
        keep_freed_memory()  # an actor that only generates would hand its KV cache back to the kernel after every draw
        self.index = index
        self.local = LocalRollouts(cfg, model_dir, build_rubric(cfg), threads, in_actor=True,
                                   engine_extra=transport_engine_kwargs(transport))
        self.receiver = WeightReceiver()
        self.nccl_receiver = NcclReceiver(self.local.engine) if transport == "nccl" else None

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

    def load(self, packed: Packed) -> float:
        # the engine copies out of the views into its own weights
        return self.local.load_weights(self.receiver.tensors(packed))["sync_s"]

    def nccl(self, what: str, *args):
        """One step of a NCCL sync on this worker's engine (``NcclReceiver.<what>``), called by the trainer."""
        if self.nccl_receiver is None or what not in ("info", "init", "start", "update", "finish", "shutdown"):
            raise RuntimeError(f"rollout worker {self.index}: no NCCL receiver call {what!r} (transport is not nccl)")
        return getattr(self.nccl_receiver, what)(*args)

    def sleep(self) -> None:
        self.local.sleep()

    def close(self) -> None:
        self.local.close()
        self.receiver.close()


def split_evenly(n: int, parts: int) -> list[range]:
    """``range(n)`` in ``parts`` contiguous pieces whose sizes differ by at most one (empty pieces dropped)."""
    bounds = [n * p // parts for p in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


class RayRollouts:
    """``cluster.rollout_workers`` actors behind the calls the loop makes on its rollouts."""

    def __init__(self, cfg: TrainConfig, model_dir: str, info: ClusterInfo):
        import ray

        c = cfg.cluster
        self.cfg, self.model_dir, self.timeout = cfg, model_dir, c.timeout_s
        self.threads = cfg.engine.threads or cfg.train.threads or cpus_each(c.rollout_workers, c.cpus_per_worker, info.cpus)
        self.transport = choose_transport(cfg, info.nodes)  # a wrong explicit choice fails here, before any engine
        self.sender: WeightSender | None = None if self.transport == "nccl" else WeightSender(self.transport)
        self.nccl: NcclSender | None = None
        self.nodes, self.local = info.nodes, c.address == "local"
        self.restarts = 0
        self.last_requests: list[DrawRequest] = []  # the latest draw's requests, one per worker (tests, debugging)
        self._remote = ray.remote(RolloutWorker)
        self.workers: list[Any] = [self._spawn(i) for i in range(c.rollout_workers)]
        self.pids: list[int] = self._gather({i: w.pid.remote() for i, w in enumerate(self.workers)},
                                            "starting its engine", retry=None)
        if self.transport == "nccl":
            try:
                self._open_nccl()
            except BaseException:
                self.close()
                raise

    def _open_nccl(self) -> None:
        self.nccl = NcclSender(lambda: self.workers, self.timeout, getattr(torch, self.cfg.engine.dtype))
        why = self.nccl.shared_gpu_problem() if self.cfg.cluster.weight_sync == "auto" else None
        if why is None:
            self.nccl.connect()  # an explicit nccl with a worker on the trainer's GPU fails here, naming it
        else:  # auto: the workers' engines also take in-place loads
            self.transport = host_transport(self.nodes)
            print(f"cluster.weight_sync=auto: not nccl ({why}); using {self.transport}")
            self.sender, self.nccl = WeightSender(self.transport), None

    def _spawn(self, index: int):
        cores = None
        if self.local and not torch.cuda.is_available():  # one node: worker i gets its own slice of the cores
            n = os.cpu_count() or 1
            first = (index * self.threads) % n
            cores = ",".join(str((first + k) % n) for k in range(min(self.threads, n)))
        return self._remote.options(num_cpus=0, num_gpus=self.cfg.cluster.gpus_per_worker, name=None, max_restarts=0,
                                    runtime_env=ACTOR_RUNTIME_ENV).remote(self.cfg, self.model_dir, index, self.threads,
                                                                      cores, self.transport)

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
        if self.nccl is not None:  # an NCCL group cannot take a new member: open it again, resend the weights
            self.nccl.reconnect()
        elif self.sender.current is not None:  # the weights the other workers sample with
            ray.get(worker.load.remote(self.sender.current), timeout=self.timeout)

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

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.nccl is not None:  # GPU to GPU; the manifest travels in the Ray calls
            sent = self.nccl.send(named_tensors)  # sync_load_s (the slowest engine's), sync_bytes
            return {"sync_s": time.perf_counter() - t0, **sent}
        packed = self.sender.pack(named_tensors)
        t1 = time.perf_counter()

        def submit(w: int):
            return self.workers[w].load.remote(packed)

        loads = self._gather({w: submit(w) for w in range(len(self.workers))}, "loading new weights", submit)
        return {"sync_s": time.perf_counter() - t0, "sync_pack_s": t1 - t0, "sync_load_s": max(loads),
                "sync_bytes": float(packed.nbytes)}

    def sleep(self) -> None:
        self._gather({w: a.sleep.remote() for w, a in enumerate(self.workers)}, "going to sleep", retry=None)

    def stats(self) -> dict[str, float]:
        return {"rollout_worker_restarts": float(self.restarts)}

    def close(self) -> None:
        import ray

        if self.nccl is not None:
            self.nccl.close()
        for worker in self.workers:
            try:
                ray.get(worker.close.remote(), timeout=30)
            except Exception:  # a worker already down has nothing to close
                pass
            ray.kill(worker, no_restart=True)
        if self.sender is not None:
            self.sender.release()

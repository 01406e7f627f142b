"""Weights from the learner's GPU to every rollout worker's vLLM engine over NCCL (``cluster.weight_sync: nccl``):
``NcclSync``, the NCCL transport of rlvr.rollout.weight_sync, and ``choose_transport``.

Built on vLLM's own weight-transfer API (``vllm.distributed.weight_transfer``, vLLM >= 0.32):

* every worker's engine is created with ``weight_transfer_config=WeightTransferConfig(backend="nccl")``,
  so its vLLM worker holds a ``NCCLWeightTransferEngine``;
* the trainer (the learner's rank 0, in the driver process) is rank 0 of a transfer group of
  1 + N ranks, opened and driven by vLLM's ``NCCLTrainerWeightTransferEngine``: ``trainer_init``
  rendezvouses over a TCP store, ``send_weights`` runs one round (``start_weight_update``,
  ``update_weights`` on the engines while the trainer broadcasts packed chunks, ``finish_weight_update``);
* the engines are driven through the four calls of vLLM's ``VLLMWeightSyncClient`` protocol. The client
  is ours (``_WorkersClient``): vLLM's trainer engine hands every engine the same rank offset (one engine
  spanning GPUs), while rlvr runs N separate one-engine actors, so worker i is given the offset after
  the ranks of workers 0..i-1. Each call is a method of the worker actor (``RolloutWorker.nccl_join``,
  ``nccl_begin``, ``nccl_receive``, ``nccl_end``, ...), which runs the engine's end of ``NcclSync`` on
  its engine: ``join``, ``begin``, ``load_into`` (the receive: vLLM loads each chunk as it arrives),
  ``end``.

Only the manifest (names, dtypes, shapes) travels in Ray calls; the bytes go GPU to GPU. Tensors are
sent in the engine's dtype (``engine.dtype``): the engine would cast them on load anyway, and a
bfloat16 engine then receives half the bytes of float32 master weights.

Deadlines: joining the group and every sync are bounded by ``cluster.timeout_s``; when one expires the
run stops with an error naming the workers that had not answered and what they were doing, and the
trainer's communicator is aborted so its stream does not stay blocked. NCCL cannot put two ranks of
one group on one GPU, so a worker that shares the trainer's GPU is refused before the group is opened
(``auto`` then keeps shared memory / the object store). A worker that dies while drawing is restarted
and the whole group is opened again (an NCCL group cannot take a new member); one that dies inside a
sync stops the run, because the others are blocked in the broadcast with it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch

from rlvr.cluster.runtime import ClusterError, free_port
from rlvr.config import ConfigError, TrainConfig
from rlvr.rollout.weight_sync import TRANSPORTS, WorkerPool, host_transport, register_transport
from rollouts import Engine
from rollouts.config import ENGINES

FIELD = "cluster.weight_sync"
OTHERS = "use cluster.weight_sync=shm (one node) or object_store (several nodes)"


# -- choosing the transport ---------------------------------------------------------------
def weight_transfer_api_problem() -> str | None:
    """Why the installed vLLM cannot do NCCL weight transfer, or None when it can."""
    try:
        import vllm
    except ImportError:
        return "vLLM is not installed"
    try:
        from vllm import LLM
        from vllm.config import WeightTransferConfig  # noqa: F401
        from vllm.distributed.weight_transfer.nccl_engine import (  # noqa: F401
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )
    except ImportError as exc:
        return f"the installed vLLM {vllm.__version__} has no NCCL weight-transfer API ({exc})"
    missing = [m for m in ("init_weight_transfer_engine", "start_weight_update", "update_weights",
                           "finish_weight_update", "shutdown_weight_transfer_engine") if not hasattr(LLM, m)]
    if missing:
        return f"the installed vLLM {vllm.__version__}'s LLM lacks {', '.join(missing)}"
    return None


def choose_transport(cfg: TrainConfig, nodes: int, cuda: bool | None = None,
                     api_problem: Callable[[], str | None] = weight_transfer_api_problem) -> str:
    """The name in ``TRANSPORTS`` of the run's transport: ``shm``, ``object_store`` or ``nccl``; an explicit
    ``nccl`` that cannot work is a ConfigError naming the field and what to use instead. ``auto`` picks
    ``nccl`` when the learner and the workers are on CUDA with vLLM engines and the installed vLLM has the
    API (whether every worker has a GPU of its own is checked once the workers run: ``check_own_gpus``),
    else the host transport of the cluster (``host_transport``)."""
    c = cfg.cluster
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if c.weight_sync in ("shm", "object_store"):
        return c.weight_sync
    problems = []
    if not cfg.engine.receives_nccl:
        receivers = "/".join(kind for kind, c in sorted(ENGINES.items()) if c.receives_nccl)
        problems.append(f"needs engine.kind={receivers} (the {cfg.engine.kind} engine has no NCCL receiver)")
    if not cuda:
        problems.append("needs the learner on a CUDA GPU (this process sees none)")
    if c.gpus_per_worker <= 0:
        problems.append(f"needs rollout workers on GPUs (cluster.gpus_per_worker={c.gpus_per_worker:g})")
    if not problems and (why := api_problem()):
        problems.append(f"needs vLLM's weight-transfer API: {why}")
    if not problems:
        return "nccl"
    if c.weight_sync == "auto":
        return host_transport(nodes)
    raise ConfigError(f"{FIELD}=nccl {'; '.join(problems)}; {OTHERS}")


def check_own_gpus(trainer_gpu: str, worker_gpus: list[str]) -> str | None:
    """None when no worker is on the trainer's GPU, else why NCCL cannot connect them."""
    shared = [i for i, g in enumerate(worker_gpus) if g == trainer_gpu]
    if not shared:
        return None
    who = "rollout worker" + ("s " if len(shared) > 1 else " ") + ", ".join(map(str, shared))
    return (f"{who} share{'' if len(shared) > 1 else 's'} the trainer's GPU ({trainer_gpu}); NCCL cannot join two "
            "ranks on one GPU, so give the workers GPUs of their own (more GPUs than learner ranks, "
            "cluster.gpus_per_worker=1)")


def rank_offsets(ranks_per_worker: list[int]) -> list[int]:
    """Rank of each worker's first engine rank in the transfer group (the trainer is rank 0)."""
    offsets, nxt = [], 1
    for r in ranks_per_worker:
        offsets.append(nxt)
        nxt += r
    return offsets


def gpu_id(device: int | None = None) -> str:
    """A name for this process's CUDA device that is unique across the cluster."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if device is None else device)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return f"GPU-{uuid}"
    return f"{socket.gethostname()}:{getattr(props, 'pci_domain_id', 0)}:{getattr(props, 'pci_bus_id', '?')}"


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # no Ray: this host's address
        return socket.gethostbyname(socket.gethostname())


def call_with_deadline(fn: Callable[[], Any], timeout_s: float, setup: Callable[[], Any] | None = None) -> Any:
    """``fn()`` in a daemon thread, waited for at most ``timeout_s`` (TimeoutError past it). NCCL calls do not
    return when a peer is gone, so a deadline cannot be kept from inside them; the thread is left behind
    (daemon: it does not hold the interpreter at exit) and the caller aborts the communicator."""
    result: dict[str, Any] = {}

    def run():
        try:
            if setup is not None:
                setup()  # e.g. the CUDA device, which is per thread
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=run, name="rlvr-nccl-sync", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"not done within {timeout_s:g} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# -- what the trainer sends -----------------------------------------------------------------
def _weight_source_base():
    from vllm.distributed.weight_transfer.base import WeightSource

    return WeightSource


def make_source(dtype: torch.dtype, device: torch.device | str):
    """A vLLM ``WeightSource`` whose tensors are staged before every send: the learner's tensors,
    cast to the engine's dtype on the trainer's device as they are packed."""

    class StagedSource(_weight_source_base()):
        def __init__(self):
            self.dtype, self.device = dtype, torch.device(device)
            self.tensors: list[tuple[str, torch.Tensor]] = []

        def stage(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
            self.tensors = list(named_tensors)

        def metadata(self):
            from vllm.distributed.weight_transfer.base import ParamMeta

            return [ParamMeta(name, self.dtype, tuple(t.shape)) for name, t in self.tensors]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in self.tensors:
                yield name, t.detach().to(device=self.device, dtype=self.dtype)

        def nbytes(self) -> int:
            return sum(t.numel() for _, t in self.tensors) * self.dtype.itemsize

    return StagedSource()


def update_info(source) -> dict[str, Any]:
    """The manifest a receiving engine is told to expect, as vLLM's trainer engine builds it from the
    source's metadata (``NCCLWeightTransferUpdateInfo``: names, dtype names, shapes)."""
    meta = source.metadata()
    return {"names": [m.name for m in meta], "dtype_names": [str(m.dtype).removeprefix("torch.") for m in meta],
            "shapes": [list(m.shape) for m in meta]}


# -- the trainer's end ------------------------------------------------------------------------
class _WorkersClient:
    """vLLM's ``VLLMWeightSyncClient`` over rlvr's rollout-worker actors: each call goes to every worker
    with the cluster deadline, and records who has not answered yet (for the timeout message)."""

    def __init__(self, workers: Callable[[], list[Any]], offsets: list[int], timeout_s: float):
        self.workers, self.offsets, self.timeout = workers, offsets, timeout_s
        self.doing, self.waiting = "", set()
        self.loaded_s = 0.0  # the slowest worker's start-to-finish time of the latest round

    def _call(self, call: Callable[[Any, int], Any], doing: str) -> list[Any]:
        """``call(actor, i)`` (an ObjectRef) on every worker, their results in worker order."""
        import ray
        from ray.exceptions import RayActorError

        workers = self.workers()
        refs = {call(w, i): i for i, w in enumerate(workers)}
        self.doing, self.waiting = doing, set(refs.values())
        out: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise ClusterError(f"{late_ones(self.waiting)} did not finish {doing} within cluster.timeout_s="
                                   f"{self.timeout:g}")
            i = refs.pop(ready[0])
            try:
                out[i] = ray.get(ready[0])
            except RayActorError as exc:
                raise ClusterError(f"rollout worker {i} died while {doing}: {exc}") from None
            self.waiting.discard(i)
        self.waiting = set()
        return [out[i] for i in sorted(out)]

    def infos(self) -> list[dict[str, Any]]:
        return self._call(lambda w, i: w.nccl_info.remote(), "reporting its GPU")

    def leave(self) -> None:
        self._call(lambda w, i: w.nccl_leave.remote(), "leaving the old NCCL group")

    # the four calls vLLM's trainer engine makes
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._call(lambda w, i: w.nccl_join.remote({**init_info, "rank_offset": self.offsets[i]}),
                   "joining the NCCL weight-transfer group")

    def start_weight_update(self) -> None:
        self._call(lambda w, i: w.nccl_begin.remote(), "preparing to receive weights")

    def update_weights(self, update_info) -> None:
        self._call(lambda w, i: w.nccl_receive.remote(update_info),
                   f"receiving {len(update_info['names'])} tensors over NCCL")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.loaded_s = max(self._call(lambda w, i: w.nccl_end.remote(), "loading the received weights"), default=0.0)


def late_ones(workers: set[int]) -> str:
    """Who a missed NCCL deadline is blamed on: the workers that had not answered, else the trainer."""
    if not workers:
        return "the trainer (rank 0 of the NCCL group)"
    return f"rollout worker{'s' if len(workers) > 1 else ''} {', '.join(map(str, sorted(workers)))}"


@register_transport
class NcclSync:
    """The NCCL transport. The learner's end (built with the ``WorkerPool``) is rank 0 of the transfer
    group, driving vLLM's ``NCCLTrainerWeightTransferEngine``; the engine's end (built without one, in
    each rollout worker) runs vLLM's weight-transfer calls on one ``rollouts.vllm_engine.VLLMEngine``,
    plus what rlvr's in-place load does around them: weights woken from sleep first, a tied head
    refreshed and the prefix cache reset after."""

    name: ClassVar[str] = "nccl"

    def __init__(self, pool: WorkerPool | None = None):
        self.pool = pool
        self.timeout = pool.timeout if pool is not None else 0.0
        self.engine = None  # vLLM's trainer engine, once the group is open
        self.client: _WorkersClient | None = None
        self.current: list[tuple[str, torch.Tensor]] | None = None  # the latest weights sent (restarts resend them)
        self.version = 0
        self._t0 = 0.0  # the engine's end: when the latest receive began

    @classmethod
    def engine_kwargs(cls) -> dict[str, Any]:
        """What the worker's vLLM engine needs for the transport (vLLM's worker then builds its receiver)."""
        from vllm.config import WeightTransferConfig

        return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}

    # -- the learner's end -------------------------------------------------------------
    def _workers(self) -> list[Any]:
        return self.pool.workers

    def open(self):
        """Join every worker into the transfer group; the transport to use. An explicit ``nccl`` with a
        worker on the trainer's GPU fails here, naming it; ``auto`` then uses the host transport instead
        (the workers' engines also take in-place loads)."""
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.source = make_source(getattr(torch, self.pool.cfg.engine.dtype), self.device)
        why = self.shared_gpu_problem() if self.pool.cfg.cluster.weight_sync == "auto" else None
        if why is None:
            self.connect()
            return self
        fallback = host_transport(self.pool.nodes)
        print(f"cluster.weight_sync=auto: not nccl ({why}); using {fallback}")
        return TRANSPORTS[fallback](self.pool).open()

    def shared_gpu_problem(self) -> str | None:
        """Why some worker cannot join the trainer's NCCL group (it shares the trainer's GPU), or None."""
        infos = _WorkersClient(self._workers, [], self.timeout).infos()
        return check_own_gpus(gpu_id(self.device.index), [info["gpu"] for info in infos])

    def connect(self) -> None:
        """Open the group with every worker (vLLM's ``trainer_init``, bounded by the deadline)."""
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        infos = _WorkersClient(self._workers, [], self.timeout).infos()
        if why := check_own_gpus(gpu_id(self.device.index), [info["gpu"] for info in infos]):
            raise ClusterError(f"{FIELD}=nccl: {why}; or {OTHERS}")
        offsets = rank_offsets([info["ranks"] for info in infos])
        init = NCCLTrainerInitInfo(master_address=_node_ip(), master_port=free_port(),
                                   world_size=1 + sum(info["ranks"] for info in infos), rank=0, packed=True)
        self.client = _WorkersClient(self._workers, offsets, self.timeout)
        self.engine = self._bounded(lambda: NCCLTrainerWeightTransferEngine.trainer_init(
            init, client=self.client, source=self.source), "joining the NCCL weight-transfer group")

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> dict[str, float]:
        """GPU to GPU; the manifest travels in the Ray calls. Stats: ``sync_s``, ``sync_load_s`` (the slowest
        engine's), ``sync_bytes``."""
        t0 = time.perf_counter()
        sent = self._send(list(named_tensors))
        self.version = version
        return {"sync_s": time.perf_counter() - t0, **sent}

    def _send(self, tensors: list[tuple[str, torch.Tensor]]) -> dict[str, float]:
        if self.engine is None:
            raise ClusterError(f"{FIELD}=nccl: the transfer group was closed by an earlier failure")
        self.source.stage(tensors)
        nbytes = self.source.nbytes()
        self._bounded(self.engine.send_weights, f"receiving {len(tensors)} tensors ({nbytes / 1e6:.1f} MB) over NCCL")
        self.current = tensors
        self.source.stage([])  # the staged list would keep a copy (async) or LoRA merge alive until the next sync
        return {"sync_load_s": self.client.loaded_s, "sync_bytes": float(nbytes)}

    def resend(self, index: int) -> None:
        """Worker ``index`` was replaced: an NCCL group cannot take a new member, so the group is opened again
        with every worker and the latest weights are sent again."""
        self._close_trainer_end()
        _WorkersClient(self._workers, [], self.timeout).leave()
        self.connect()
        if self.current is not None:
            self._send(self.current)

    def _bounded(self, fn: Callable[[], Any], doing: str) -> Any:
        """``fn()`` within ``cluster.timeout_s``; past it the trainer's communicator is aborted and the error
        names who had not answered and what they were doing."""
        try:
            return call_with_deadline(fn, self.timeout, setup=lambda: torch.cuda.set_device(self.device))
        except TimeoutError:
            late = late_ones(self.client.waiting) if self.client is not None else "the rollout workers"
            what = self.client.doing if self.client is not None and self.client.doing else doing
            self._close_trainer_end()
            raise ClusterError(f"{late} did not finish {what} within cluster.timeout_s={self.timeout:g} "
                               f"({FIELD}=nccl); the transfer group was aborted") from None
        except ClusterError:  # a worker missed its own deadline or died: the group is unusable
            self._close_trainer_end()
            raise
        except Exception as exc:
            self._close_trainer_end()
            raise ClusterError(f"NCCL weight sync failed while {doing}: {exc!r}") from exc

    def _close_trainer_end(self) -> None:
        if self.engine is not None:
            try:
                self.engine.shutdown()  # PyNcclCommunicator.destroy: ncclCommAbort, bounded by vLLM
            except Exception:  # already broken: nothing left to release
                pass
            self.engine = None

    def close(self) -> None:
        self._close_trainer_end()
        self.current = None

    # -- the engine's end (inside a rollout worker) ------------------------------------------
    def info(self, engine: Engine) -> dict[str, Any]:
        parallel = engine.llm.llm_engine.vllm_config.parallel_config
        return {"gpu": gpu_id(), "ranks": int(parallel.world_size)}

    def join(self, engine: Engine, init_info: dict[str, Any]) -> None:
        engine.llm.init_weight_transfer_engine({"init_info": init_info})

    def begin(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()
        if engine.asleep:  # weights first: the reload needs them resident
            engine.llm.wake_up(tags=["weights"])
        engine.llm.start_weight_update()

    def load_into(self, engine: Engine, payload: dict[str, Any]) -> float:
        """Receive one round's tensors (``payload``: the manifest) and load them as they arrive; returns
        the seconds since ``begin``."""
        engine.llm.update_weights({"update_info": payload})
        return time.perf_counter() - self._t0

    def end(self, engine: Engine) -> float:
        llm = engine.llm
        llm.finish_weight_update()
        if engine.tied_embeddings:
            from rollouts.tied_head import refresh_tied_heads_on_worker

            llm.collective_rpc(refresh_tied_heads_on_worker)
        engine.wake_up()
        llm.reset_prefix_cache()
        engine.last_sync_path = "nccl"
        engine.last_sync_s = time.perf_counter() - self._t0
        return engine.last_sync_s

    def leave(self, engine: Engine) -> None:
        engine.llm.shutdown_weight_transfer_engine()

"""How the learner's weights reach the rollout engines: one ``WeightSync`` class per transport.

A transport has two ends. The learner's end calls ``push(named_tensors, version)``, which moves the
weights to every engine and returns the sync's stats (``sync_s``, and where it applies
``sync_pack_s``, ``sync_load_s``, ``sync_bytes``). The engine's end, wherever the engine runs, calls
``load_into(engine, payload)`` with what the push delivered to it and returns the load's seconds. The
same class serves both ends: built with a ``WorkerPool`` it is the learner's end; built without one,
the engine's end inside a rollout worker.

* ``InProcessSync``: the engine is in this process (``LocalRollouts``); the tensors are copied into it.
* ``SharedMemorySync`` (``cluster.weight_sync: shm``): one POSIX shared-memory block on this node,
  packed once per sync by the one packer (``rollouts.shm_sync``); each worker maps it and loads
  views of it (no copy on the worker side). The block is kept until the next sync, so a restarted
  worker gets the weights the others sample with.
* ``ObjectStoreSync`` (``object_store``): one ``ray.put`` of the packed buffer; Ray moves it to other
  nodes once per node and workers on a node read it zero-copy.
* ``NcclSync`` (``nccl``, rlvr.rollout.nccl): from the learner's GPU straight into every engine.

The transports that cross processes are registered by name (``TRANSPORTS``, the values of
``cluster.weight_sync``); ``RayRollouts`` builds the one the config chose from the registry.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any, ClassVar, Protocol

import torch

from rlvr.config import TrainConfig
from rollouts import Engine
from rollouts.shm_sync import Layout, layout_of, pack_into, unpack

NamedTensors = Iterable[tuple[str, torch.Tensor]]


class WorkerPool(Protocol):
    """What a transport that crosses processes sends through (``rlvr.rollout.ray.RayRollouts``)."""

    cfg: TrainConfig
    nodes: int  # Ray nodes of the cluster
    timeout: float  # cluster.timeout_s
    workers: list[Any]  # the live worker actors (a restart replaces one)

    def call_all(self, call: Callable[[Any], Any], doing: str) -> list[Any]:
        """``call(actor)`` (an ObjectRef) on every worker, their results in worker order, within the
        deadline; a worker that died is restarted and called again."""
        ...


class WeightSync(Protocol):
    """One transport: ``push`` at the learner's end, ``load_into`` at each engine's end."""

    name: ClassVar[str]

    def push(self, named_tensors: NamedTensors, version: int) -> dict[str, float]: ...

    def load_into(self, engine: Engine, payload: Any) -> float: ...

    def close(self) -> None: ...


TRANSPORTS: dict[str, type] = {}


def register_transport(cls: type) -> type:
    """Class decorator: a transport selectable as ``cluster.weight_sync: <cls.name>``."""
    if cls.name in TRANSPORTS and TRANSPORTS[cls.name] is not cls:
        raise ValueError(f"weight-sync transport {cls.name!r} is registered twice")
    TRANSPORTS[cls.name] = cls
    return cls


def host_transport(nodes: int) -> str:
    """The transport without GPUs between learner and engines: shared memory on one node, else the object store."""
    return "shm" if nodes == 1 else "object_store"


def _takes_version(engine: Engine) -> bool:
    """Whether ``engine.load_weights`` takes ``version=`` (every ``EngineBase`` does)."""
    try:
        params = inspect.signature(engine.load_weights).parameters
    except (TypeError, ValueError):
        return False
    return "version" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _load(engine: Engine, named_tensors: NamedTensors, version: int | None = None) -> float:
    """Load into ``engine`` (which records ``version`` on every token it samples from now on); the seconds."""
    t0 = time.perf_counter()
    if version is not None and _takes_version(engine):
        engine.load_weights(named_tensors, version=version)
    else:  # an engine written before versions (a plugin): its tokens record none
        engine.load_weights(named_tensors)
    return time.perf_counter() - t0


class InProcessSync:
    """The engine lives in this process: a push is the engine's own load (a copy into its weights)."""

    name: ClassVar[str] = "in_process"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.version = 0

    def push(self, named_tensors: NamedTensors, version: int) -> dict[str, float]:
        self.version = version
        return {"sync_s": _load(self.engine, named_tensors, version)}

    def load_into(self, engine: Engine, payload: NamedTensors) -> float:
        return _load(engine, payload)

    def close(self) -> None:
        pass


@dataclass
class Packed:
    """A host transport's payload as a worker receives it: the transport, its handle and the layout."""

    transport: str  # the TRANSPORTS name of the class that reads it
    handle: Any  # the block's name | [ObjectRef] (in a list, so Ray passes the ref, not its value)
    layout: Layout
    nbytes: int
    version: int = 0


class _PackedSync:
    """A transport that packs the learner's tensors once per sync into one flat buffer and sends workers
    its layout. The packing buffer is allocated once and rewritten in place by every sync of the same
    size: first-touch page faults on a fresh buffer cost more than the copy itself (~6x for a 345 MB
    model)."""

    name: ClassVar[str]

    def __init__(self, pool: WorkerPool | None = None):
        self.pool = pool
        self.current: Packed | None = None  # the newest payload; None: workers hold the model directory's weights

    # -- the learner's end -------------------------------------------------------------
    def open(self) -> _PackedSync:
        """The transport to use once the workers run (itself)."""
        return self

    @classmethod
    def engine_kwargs(cls) -> dict[str, Any]:
        """What a worker's engine needs to receive through this transport (nothing)."""
        return {}

    def push(self, named_tensors: NamedTensors, version: int) -> dict[str, float]:
        """Every worker must have finished loading the previous payload (the loop waits for each sync)."""
        t0 = time.perf_counter()
        tensors = list(named_tensors)
        layout, total = layout_of(tensors)
        handle = self._pack(tensors, layout, max(total, 1))
        self.current = packed = Packed(self.name, handle, layout, total, version)
        t1 = time.perf_counter()
        loads = self.pool.call_all(lambda worker: worker.load_weights.remote(packed), "loading new weights")
        return {"sync_s": time.perf_counter() - t0, "sync_pack_s": t1 - t0, "sync_load_s": max(loads),
                "sync_bytes": float(packed.nbytes)}

    def resend(self, index: int) -> None:
        """Worker ``index`` was restarted: it gets the weights the others sample with."""
        import ray

        if self.current is not None:
            ray.get(self.pool.workers[index].load_weights.remote(self.current), timeout=self.pool.timeout)

    def _pack(self, tensors: list[tuple[str, torch.Tensor]], layout: Layout, size: int) -> Any:
        raise NotImplementedError

    # -- the engine's end ---------------------------------------------------------------
    def load_into(self, engine: Engine, payload: Packed) -> float:
        # the engine copies out of the views
        return _load(engine, unpack(self._buffer(payload), payload.layout), payload.version)

    def _buffer(self, payload: Packed) -> torch.Tensor:
        raise NotImplementedError


@register_transport
class SharedMemorySync(_PackedSync):
    """One shared-memory block on this node. The worker keeps it mapped between syncs (the learner reuses
    it), so its pages are faulted in once, not per sync."""

    name: ClassVar[str] = "shm"

    def __init__(self, pool: WorkerPool | None = None):
        super().__init__(pool)
        self._shm: SharedMemory | None = None  # the learner's block, or the worker's mapping of it

    def _pack(self, tensors: list[tuple[str, torch.Tensor]], layout: Layout, size: int) -> str:
        if self._shm is None or self._shm.size < size:
            self.close()
            self._shm = SharedMemory(create=True, size=size)
        pack_into(torch.frombuffer(self._shm.buf, dtype=torch.uint8), tensors, layout)
        return self._shm.name

    def _buffer(self, payload: Packed) -> torch.Tensor:
        if self._shm is None or self._shm.name != payload.handle:
            self._detach()
            self._shm = SharedMemory(name=payload.handle)
            # Attaching registers the block with this process's resource tracker, which would unlink
            # it (the learner's block) when the worker exits; the learner owns it.
            from multiprocessing import resource_tracker

            resource_tracker.unregister(self._shm._name, "shared_memory")
        return torch.frombuffer(self._shm.buf, dtype=torch.uint8)

    def _detach(self) -> None:
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a view still alive somewhere; the learner unlinks the block anyway
                pass
            self._shm = None

    def close(self) -> None:
        """The learner's end unlinks its block; a worker's end only unmaps it."""
        if self._shm is not None and self.pool is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None
        self._detach()


@register_transport
class ObjectStoreSync(_PackedSync):
    """One ``ray.put`` of a staging array per sync; workers on a node read it zero-copy."""

    name: ClassVar[str] = "object_store"

    def __init__(self, pool: WorkerPool | None = None):
        super().__init__(pool)
        self._staging = None  # numpy uint8

    def _pack(self, tensors: list[tuple[str, torch.Tensor]], layout: Layout, size: int) -> list:
        import numpy as np
        import ray

        if self._staging is None or self._staging.size != size:
            self._staging = np.empty(size, dtype=np.uint8)
        pack_into(torch.from_numpy(self._staging), tensors, layout)
        return [ray.put(self._staging)]

    def _buffer(self, payload: Packed) -> torch.Tensor:
        import ray

        array = ray.get(payload.handle[0])
        with warnings.catch_warnings():  # the object store's buffer is read-only; it is only read here
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)

    def close(self) -> None:
        self._staging = None

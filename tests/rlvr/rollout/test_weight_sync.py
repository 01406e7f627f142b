"""The weight-sync transports (rlvr.rollout.weight_sync) and the Rollouts protocol, without Ray or a model:
the one packer round-trips every dtype, the shared-memory transport's learner end packs once into a block
it reuses and its engine's end loads views of it, and the registry holds what ``cluster.weight_sync`` names.
(The transports over real Ray workers: tests/rlvr/cluster/test_cluster_rollouts.py; NCCL: tests/rlvr/rollout/test_nccl_sync.py.)"""

from __future__ import annotations

import typing
from multiprocessing import resource_tracker

import pytest
import torch

import rlvr.rollout.nccl  # noqa: F401 - registers the NCCL transport
from rlvr.config import ClusterConfig
from rlvr.rollout import LocalRollouts, Rollouts
from rlvr.rollout.weight_sync import TRANSPORTS, InProcessSync, SharedMemorySync
from rollouts.shm_sync import layout_of, pack_into, unpack


def tensors() -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [("a", torch.randn(3, 4)), ("b.t", torch.randn(4, 5).t()),  # not contiguous
            ("c", torch.randn(7).to(torch.bfloat16)), ("d", torch.arange(5)), ("e", torch.randn(0, 2))]


class RecordingEngine:
    def __init__(self):
        self.loaded: list[tuple[str, torch.Tensor]] = []

    def load_weights(self, named_tensors):
        self.loaded = [(n, t.clone()) for n, t in named_tensors]  # the engine copies out of the views


def test_the_packer_round_trips_every_dtype_and_layout():
    named = tensors()
    layout, total = layout_of(named)
    assert total == layout[-1][3] + layout[-1][4]
    assert all(off % t.element_size() == 0 for (_, t), (_, _, _, off, _) in zip(named, layout))  # int64 after bf16
    one_dtype = [(n, t.float()) for n, t in named]
    assert layout_of(one_dtype)[1] == sum(t.numel() * 4 for _, t in one_dtype)  # no padding between float32s
    buf = torch.empty(total, dtype=torch.uint8)
    pack_into(buf, named, layout)
    out = unpack(buf, layout)
    assert [n for n, _ in out] == [n for n, _ in named]
    for (_, a), (_, b) in zip(named, out):
        assert a.dtype == b.dtype and torch.equal(a, b)


class _Ref:
    def __init__(self, fn):
        self.remote = fn


class FakeWorker:
    """An actor's ``load_weights`` as RolloutWorker runs it: the transport's engine end, built without a pool."""

    def __init__(self):
        self.receiver, self.engine = SharedMemorySync(), RecordingEngine()
        self.load_weights = _Ref(self._load)

    def _load(self, packed):
        real = resource_tracker.unregister  # one process here: keep the learner's registration of its block
        resource_tracker.unregister = lambda *a: None
        try:
            return self.receiver.load_into(self.engine, packed)
        finally:
            resource_tracker.unregister = real


class FakePool:
    cfg, nodes, timeout = None, 1, 5.0

    def __init__(self, n: int):
        self.workers = [FakeWorker() for _ in range(n)]

    def call_all(self, call, doing):
        return [call(w) for w in self.workers]


def test_shared_memory_packs_once_into_a_reused_block_and_each_engine_loads_it():
    pool = FakePool(2)
    sync = SharedMemorySync(pool)
    named = tensors()
    try:
        stats = sync.push(named, version=1)
        assert set(stats) == {"sync_s", "sync_pack_s", "sync_load_s", "sync_bytes"}
        assert stats["sync_bytes"] == layout_of(named)[1]
        for w in pool.workers:
            assert [n for n, _ in w.engine.loaded] == [n for n, _ in named]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(named, w.engine.loaded))
        block = sync.current.handle
        later = [(n, t + 1) for n, t in named]
        sync.push(later, version=2)
        assert sync.current.handle == block and sync.current.version == 2  # the same block, rewritten in place
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(later, pool.workers[1].engine.loaded))
        pool.workers[0] = FakeWorker()  # a restarted worker is sent the newest payload (RayRollouts: resend)
        pool.workers[0].load_weights.remote(sync.current)
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(later, pool.workers[0].engine.loaded))
    finally:
        for w in pool.workers:
            w.receiver.close()
        sync.close()
    assert sync._shm is None


def test_in_process_push_is_the_engines_own_load():
    engine = RecordingEngine()
    stats = InProcessSync(engine).push(tensors(), version=1)
    assert list(stats) == ["sync_s"] and [n for n, _ in engine.loaded] == [n for n, _ in tensors()]


def test_a_push_gives_its_version_to_an_engine_that_takes_one():
    """Every EngineBase records the version on the tokens it samples (train.async.in_flight); an engine whose
    load_weights predates versions (a plugin) still loads."""

    class Versioned(RecordingEngine):
        version = None

        def load_weights(self, named_tensors, version=None):
            super().load_weights(named_tensors)
            self.version = version

    engine = Versioned()
    InProcessSync(engine).push(tensors(), version=3)
    assert engine.version == 3 and len(engine.loaded) == len(tensors())


def test_the_registry_holds_every_transport_the_config_names():
    names = set(typing.get_args(ClusterConfig.model_fields["weight_sync"].annotation)) - {"auto"}
    assert set(TRANSPORTS) == names
    assert all(TRANSPORTS[n].name == n for n in names)


def test_both_rollouts_have_the_protocols_calls():
    from rlvr.rollout.ray import RayRollouts

    calls = ["generate_and_score", "evaluate", "load_weights", "sleep", "stats", "close"]
    for cls in (LocalRollouts, RayRollouts):
        assert all(callable(getattr(cls, c, None)) for c in calls), cls
    local = object.__new__(LocalRollouts)
    local.pids = []
    assert isinstance(local, Rollouts)


@pytest.mark.parametrize("name", ["shm", "object_store"])
def test_host_transports_need_nothing_from_the_engine(name):
    assert TRANSPORTS[name].engine_kwargs() == {}

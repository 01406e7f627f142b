"""The process settings a local Ray run applies for speed: no prestarted idle workers, and actors
that keep their freed heap (rlvr.cluster.runtime). Each is checked against what it replaces."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


@pytest.fixture(autouse=True)
def _needs_ray():
    """Skipped without ray; imported when a test here first runs, not at collection (seconds)."""
    pytest.importorskip("ray")


# Eight 2 MiB buffers allocated, touched and freed, ten times: what a draw's KV cache does to the heap.
CHURN = """
import resource, sys, torch
from rlvr.cluster.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(10):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bufs = [torch.ones(2 << 18) for _ in range(8)]
    del bufs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[5:]))
"""


def faults_in_the_last_rounds(mode: str) -> int:
    # glibc's thresholds adapt to what was freed, so whether its defaults keep such a pattern's memory
    # varies from run to run (they did not for the actor's draws: ~8,000 faults per draw). Pinned to
    # glibc's documented starting values (128 KiB), they never do: every round faults again.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_heap_is_not_faulted_in_again_by_the_next_draw():
    default, kept = faults_in_the_last_rounds("default"), faults_in_the_last_rounds("keep")
    # the freed 16 MiB go back to the kernel each round and 4,096 pages fault in again; with the heap
    # kept the last five rounds mostly reuse it (a round now and then still grows it: fragmentation)
    assert default > 5 * 4096 * 0.9, default
    assert kept < default / 4, (kept, default)


def raylet_children() -> list[str]:
    """Command lines of the worker processes the raylet of this Ray instance started."""
    import ray

    node = ray._private.worker._global_node
    raylet = next(p.process.pid for p in node.all_processes["raylet"])
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == raylet:
                with open(f"/proc/{pid}/cmdline") as f:
                    out.append(f.read().replace("\0", " ").strip())
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_ray_starts_no_idle_workers(ray_instance):
    ray = ray_instance

    @ray.remote(num_cpus=0)
    class Probe:
        def ping(self) -> int:
            return os.getpid()

    actor = Probe.remote()
    ray.get(actor.ping.remote(), timeout=120)
    time.sleep(2)  # Ray prestarts its idle workers when the driver registers: they would be up by now
    try:
        # a worker shows as default_worker.py until it runs its first task, then as ray::IDLE or ray::<Actor>
        idle = [c for c in raylet_children() if c.startswith("ray::IDLE") or "default_worker.py" in c]
        assert idle == [], f"idle Ray workers beside the actor: {idle}"
    finally:
        ray.kill(actor)

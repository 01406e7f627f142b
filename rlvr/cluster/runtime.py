"""Joining or starting the Ray cluster a run uses, and checking it can hold the run.

Everything here runs before any model loads: an unreachable address, or more workers or ranks
than the cluster has CPUs or GPUs, is one error naming the field.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from rlvr.config import ClusterConfig, ConfigError


class ClusterError(RuntimeError):
    """A worker or rank failed, died or missed its deadline; the message names it and what it was doing."""


# Ray starts every worker process at niceness 15 (its RAY_worker_niceness default), so the driver and Ray's
# own daemons win the cores from them. Our actors are where the compute runs (the driver mostly waits on
# them), and on shared cores a niced OpenMP team stalls whenever any of its threads is preempted: the
# engine generated ~6% slower in an actor than in the trainer's process. Ray's job supervisor passes the
# same variable to opt out.
ACTOR_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}

# glibc's malloc thresholds for an actor that computes in bursts (rlvr.cluster.runtime.keep_freed_memory)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more (half its 64 MiB arena heap)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Keep freed memory in this process's heap instead of handing it back to the kernel after each call.

    glibc trims the top of its heap once more than twice the (adaptive) mmap threshold is free there. In
    the trainer's single process the learner's tensors sit above the engine's, so what a draw frees stays
    in the heap for the next one. An actor that only generates frees everything at the end of each
    draw, the heap is trimmed, and the next draw takes a page fault for every page of its KV cache and
    activations again: ~8,000 faults per demo draw, generation 14-23% slower than in process. With the
    thresholds fixed (allocations up to 32 MiB from the heap, trim only above 1 GiB free) the heap keeps
    its high-water mark, as the single process's does. Returns False where the C library is not glibc.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def free_port() -> int:
    """A TCP port free on this host right now (for a rendezvous: torch.distributed, NCCL weight transfer)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int, **kwargs) -> None:
    """``ray.init`` for a Ray instance inside this run, without Ray's prestarted idle workers.

    By default the raylet starts one idle worker process per CPU for the first driver. Our actors
    never use them (an actor with its own ``runtime_env`` gets a worker started for it), but each idle
    worker wakes ~90 times a second, and every wake-up can preempt one thread of the OpenMP team that
    is computing and stall the team at its next barrier: in a trace of the demo's 1-worker run
    (``perf record -e sched:sched_switch``) the two idle workers preempted the compute threads ~115
    times a second while using 1% of the CPU. The raylet reads its config from ``RAY_<key>``
    variables; a value the user set wins.
    """
    import ray

    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING", **kwargs)


@dataclass
class ClusterInfo:
    cpus: float
    gpus: float
    nodes: int
    started_here: bool  # address=local: this run owns the Ray instance and shuts it down


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """``host:port`` answers a TCP connect (Ray's own client retries for a long time before it fails)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"cluster.address={address!r}: expected 'local', 'auto' or host:port (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cluster.address={address!r} is unreachable ({exc}); start the head node with "
                          "`ray start --head` there, or use cluster.address=local for a Ray instance inside "
                          "this run") from None


def connect(cluster: ClusterConfig) -> ClusterInfo:
    """Start (``local``) or join (``auto``, ``host:port``) Ray, then check the run fits it."""
    import ray

    started = False
    if cluster.address not in ("local", "auto"):
        _check_reachable(cluster.address)
    if ray.is_initialized():  # a caller (a test, a notebook) already runs one: use it as it is
        pass
    elif cluster.address == "local":
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        start_local_ray(os.cpu_count() or 1, configure_logging=True, log_to_driver=True)
        started = True
    else:
        try:
            ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=True)
        except ConnectionError as exc:
            raise ConfigError(f"cluster.address={cluster.address!r}: no Ray cluster answers ({exc}); start one "
                              "with `ray start --head`, or use cluster.address=local") from None
    res = ray.cluster_resources()
    info = ClusterInfo(cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
                       nodes=sum(1 for n in ray.nodes() if n.get("Alive")), started_here=started)
    try:
        check_fits(cluster, info)
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    return info


def check_fits(cluster: ClusterConfig, info: ClusterInfo) -> None:
    """Workers and ranks are colocated (a synchronous step alternates between them), so each side
    alone must fit the cluster's CPUs and GPUs."""
    for what, count, cpus, gpus in (("rollout_workers", cluster.rollout_workers, cluster.cpus_per_worker,
                                     cluster.gpus_per_worker),
                                    ("learner_ranks", cluster.learner_ranks, cluster.cpus_per_rank,
                                     cluster.gpus_per_rank)):
        cpus = cpus_each(count, cpus, info.cpus)
        if count * cpus > info.cpus:
            raise ConfigError(f"cluster.{what}={count} x {cpus:g} CPUs each needs {count * cpus:g} CPUs; the Ray "
                              f"cluster has {info.cpus:g} (lower cluster.{what} or its CPUs per {what[:-1]})")
        if count * gpus > info.gpus:
            raise ConfigError(f"cluster.{what}={count} x {gpus:g} GPUs each needs {count * gpus:g} GPUs; the Ray "
                              f"cluster has {info.gpus:g}")


def cpus_each(count: int, asked: float | None, cluster_cpus: float) -> int:
    """Threads of one worker or rank: what it asked for, else an equal share of the cluster's CPUs."""
    return max(1, int(asked if asked is not None else cluster_cpus // max(count, 1)))


def pinned_cores(workers: int, learner_threads: int) -> tuple[list[list[int]], list[int]]:
    """``cluster.pin_cores``: each rollout worker's cores and the learner's, split from the cores this
    process may run on. The learner keeps ``learner_threads`` cores (0: half), taken from the end; the
    workers share the rest equally. Too few cores for that is an error naming them."""
    cores = sorted(os.sched_getaffinity(0))
    learner = learner_threads or max(1, len(cores) // 2)
    each = (len(cores) - learner) // max(workers, 1)
    if each < 1:
        raise ClusterError(f"cluster.pin_cores: {len(cores)} cores cannot give {workers} rollout worker(s) a core each "
                           f"beside the learner's {learner} (train.threads); use fewer workers or learner threads")
    return [cores[i * each:(i + 1) * each] for i in range(workers)], cores[len(cores) - learner:]


def disconnect(info: ClusterInfo | None) -> None:
    import ray

    if info is not None and info.started_here and ray.is_initialized():
        ray.shutdown()


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
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level="WARNING",
                 configure_logging=True, log_to_driver=True)
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


def disconnect(info: ClusterInfo | None) -> None:
    import ray

    if info is not None and info.started_here and ray.is_initialized():
        ray.shutdown()

"""Rollouts for upcoming steps, produced at most ``staleness`` steps ahead of the learner.

``staleness == 0`` is the synchronous loop: a step's rollouts are drawn when the step asks for
them, and weights are pushed into the engine right after the learner's update.

``staleness == k > 0`` is k-step-off-policy (``train.async: true``; k = 1 is the usual
one-step-off): one worker thread owns the rollout engine and runs its jobs in order: draw the
rollouts of step s + k while the learner trains on step s, then load the weights the learner
produced. Every job that touches the engine goes through that one queue (draws, weight loads,
evaluations), so the engine never sees two callers. A batch trained at step s was sampled by
the weights of step s - 1 - k; the learner corrects with truncated importance sampling.

``train.async.in_flight`` (rlvr.pipeline.InFlight): a weight load does not wait behind the draws. The
engine takes each new version between two of its decode steps, keeping the rows it is sampling, and
every token records the version that sampled it. A draw of step t starts no earlier than the draw of
step t - k (k = ``max_staleness``), so no token is more than k versions older than the learner that
trains on it. Deterministic mode loads version t - k at decode step ``update_at`` of the draw of step t
(the engine waits there for the learner), so a run at ``train.threads=1`` repeats exactly.

The worker spends its time waiting on the engine (a separate vLLM process, or torch kernels
that release the GIL), so the overlap is real on CPU as long as each side has its own cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.algorithms import drop_thin_groups
from rlvr.envs import Trajectory
from rlvr.scoring import EpisodeGroup
from rollouts import Completion, Group
from verifiers import Score


@dataclass
class ScoredGroup:
    """One prompt's group of episodes (``group``, an ``EpisodeGroup``: each episode as a completion, and
    token by token) with the rubric's score for each."""

    row: dict[str, Any]
    group: Group
    scores: list[Score]

    @property
    def rewards(self) -> torch.Tensor:  # [n] the verifier rewards, before any shaping
        return torch.tensor([s.reward for s in self.scores], dtype=torch.float32)

    @property
    def valid(self) -> torch.Tensor:  # [n] bool: enters the group's baseline and the loss
        """The samples whose outcome was the policy's doing (``Score.trainable``); none at all when fewer than
        two are left of a larger group (it is dropped: no baseline to compare with). A group of one keeps its
        one sample if valid (REINFORCE with ``sampling.n=1`` has no group baseline to lose)."""
        ok = torch.tensor([s.trainable for s in self.scores], dtype=torch.bool)
        return drop_thin_groups(ok, torch.zeros(len(ok), dtype=torch.long))

    def to_json(self) -> dict[str, Any]:
        g = self.group
        group = {"prompt": g.prompt, "prompt_ids": g.prompt_ids, "completions": [dataclasses.asdict(c) for c in g.completions]}
        if isinstance(g, EpisodeGroup):
            group["episodes"] = [t.to_json() for t in g.episodes]
            if g.sequences:
                group["sequences"] = [[t.to_json() for t in seqs] for seqs in g.sequences]
        return {"row": self.row, "group": group, "scores": [dataclasses.asdict(s) for s in self.scores]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScoredGroup:
        g = d["group"]
        comps = [Completion(**c) for c in g["completions"]]
        if "episodes" in g:
            group: Group = EpisodeGroup(g["prompt"], g["prompt_ids"], comps, [Trajectory.from_json(t) for t in g["episodes"]],
                                        [[Trajectory.from_json(t) for t in seqs] for seqs in g.get("sequences", [])])
        else:  # a checkpoint from before episodes
            group = Group(g["prompt"], g["prompt_ids"], comps)
        return cls(d["row"], group, [Score(**s) for s in d["scores"]])


@dataclass
class StepRollouts:
    """What one step trains on: the kept groups, every group drawn, sampling stats, timings."""

    step: int
    batch: list[ScoredGroup]
    drawn: list[ScoredGroup]
    stats: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # generate_s, score_s
    version: int = 0  # learner updates in the weights that sampled it

    def to_json(self) -> dict[str, Any]:
        drawn_index = {id(sg): i for i, sg in enumerate(self.drawn)}
        return {"step": self.step, "drawn": [sg.to_json() for sg in self.drawn], "version": self.version,
                "batch": [drawn_index[id(sg)] for sg in self.batch], "stats": self.stats, "timings": self.timings}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StepRollouts:
        drawn = [ScoredGroup.from_json(sg) for sg in d["drawn"]]
        return cls(d["step"], [drawn[i] for i in d["batch"]], drawn, d["stats"], d["timings"], d["version"])


class RolloutPipeline:
    """Runs the jobs of ``rollouts`` inline (``staleness == 0``) or on one worker thread, in submission
    order. A job is data: a step to draw (``draw_step(step)``, e.g. rlvr.draw.StepDrawer) or the name
    of a ``rollouts`` method with its arguments (``submit("load_weights", weights)``)."""

    def __init__(self, rollouts: Any, draw_step: Callable[[int], StepRollouts], staleness: int,
                 worker_threads: int = 0):
        self.rollouts, self.draw_step, self.staleness = rollouts, draw_step, staleness
        self._pending: dict[int, Future] = {}
        self._busy: list[tuple[float, float]] = []  # (start, end) of every worker job, for the idle metric
        self._running_since: float | None = None
        self._lock = threading.Lock()
        self._pool = None
        self.in_flight: InFlight | None = None  # set by the run under train.async.in_flight
        if staleness > 0:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="rollouts", initializer=self._init_worker,
                                            initargs=(worker_threads,))

    @staticmethod
    def _init_worker(threads: int) -> None:
        if threads:  # OpenMP thread counts are per calling thread: set the worker's own
            torch.set_num_threads(threads)

    def _timed(self, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        with self._lock:
            self._running_since = start
        try:
            return fn()
        finally:
            with self._lock:
                self._running_since = None
                self._busy.append((start, time.perf_counter()))

    def _run(self, fn: Callable[[], Any]) -> Future:
        if self._pool is None:
            return _called(lambda: self._timed(fn))
        return self._pool.submit(self._timed, fn)

    # -- jobs ----------------------------------------------------------------------------
    def submit_draw(self, step: int, version: int = 0) -> None:
        """Queue the draw of ``step``'s rollouts; ``version``: learner updates in the engine's weights by then."""

        def job() -> StepRollouts:
            with self.in_flight.during(step) if self.in_flight is not None else contextlib.nullcontext():
                rollouts = self.draw_step(step)
            rollouts.version = version
            return rollouts

        self._pending[step] = self._run(job)

    def redraw(self, step: int, rows: list[dict[str, Any]]) -> list[ScoredGroup]:
        """``rows``' groups drawn again for ``step`` (``draw_step.redraw``), behind the jobs queued so far."""
        return self._run(functools.partial(self.draw_step.redraw, step, rows)).result()

    def restore(self, rollouts: StepRollouts) -> None:
        """A step's rollouts drawn before a checkpoint, put back as if just drawn."""
        fut: Future = Future()
        fut.set_result(rollouts)
        self._pending[rollouts.step] = fut

    def has(self, step: int) -> bool:
        return step in self._pending

    def take(self, step: int) -> StepRollouts:
        return self._pending.pop(step).result()

    def pending(self) -> list[StepRollouts]:
        """Rollouts drawn for steps not trained yet (waits for them), oldest first."""
        return [self._pending[s].result() for s in sorted(self._pending)]

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future:
        """``rollouts.<method>(*args, **kwargs)`` (a weight load, an evaluation), queued behind the draws."""
        return self._run(functools.partial(getattr(self.rollouts, method), *args, **kwargs))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``submit`` and wait for its answer."""
        return self.submit(method, *args, **kwargs).result()

    def state_dict(self) -> dict[str, Any]:
        """The rollouts drawn for steps not trained yet (waits for them), as JSON-ready data."""
        return {"pending": [r.to_json() for r in self.pending()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for pending in state["pending"]:
            self.restore(StepRollouts.from_json(pending))

    def busy_s(self, since: float, until: float) -> float:
        """Seconds the engine side spent on jobs within ``[since, until]``."""
        with self._lock:
            spans = list(self._busy) + ([(self._running_since, until)] if self._running_since is not None else [])
            self._busy = [(a, b) for a, b in self._busy if b > since]  # older spans are never asked for again
        return sum(max(0.0, min(b, until) - max(a, since)) for a, b in spans)

    def close(self) -> None:
        if self.in_flight is not None:
            self.in_flight.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class InFlight:
    """In-flight weight updates for a rollout pipeline (``train.async.in_flight``): in this process or on a Ray
    worker whose actor takes the load while it draws; deterministic mode needs the engine in this process
    (``engine``, of ``rlvr.rollout.local.LocalRollouts``).

    ``push(weights, version)`` from the learner's thread: as soon as pushed (the engine loads them between two
    decode steps of the draw it is running, or at once when idle), or, ``deterministic``, held for the draw that
    takes them: the draw of step t loads version t - k when it has run ``update_at`` decode steps (or when it
    ends, if sooner), waiting for the learner there. A version no later draw takes (the last k steps') is loaded
    as a job behind the draws, so an evaluation queued after it sees it. ``during(step)`` wraps the draw of
    ``step`` on the rollout worker thread."""

    def __init__(self, pipe: RolloutPipeline, engine: Any, staleness: int, steps: int, deterministic: bool,
                 update_at: int):
        self.pipe, self.engine, self.k, self.steps = pipe, engine, staleness, steps
        self.deterministic, self.update_at = deterministic, update_at
        self._held: dict[int, Any] = {}  # version -> weights, waiting for the draw that loads them
        self._cond = threading.Condition()
        self._closed = False

    def push(self, weights: Any, version: int) -> Future:
        taker = version + self.k  # the draw running when it lands (deterministic: the one that loads it)
        if taker > self.steps:  # no draw left to take it: a job behind the draws
            return self.pipe.submit("load_weights", weights, version=version)
        if not self.deterministic:  # the engine takes it between two decode steps; this thread waits for that
            return _called(lambda: self.pipe.rollouts.load_weights(weights, version=version))
        with self._cond:
            self._held[version] = weights
            self._cond.notify_all()
        return _called(dict)  # no stats: the load is part of the draw that takes it

    def _take(self, version: int) -> None:
        """Load the held ``version`` into the engine (on the worker thread, between decode steps)."""
        with self._cond:
            while version not in self._held:
                if self._closed:
                    raise RuntimeError(f"the run stopped before the learner pushed version {version}")
                self._cond.wait()
            weights = self._held.pop(version)
        self.pipe.rollouts.load_weights(weights, version=version)

    def close(self) -> None:
        """Wake a draw waiting for a version that will not come (the run is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def during(self, step: int) -> Any:
        """A context for the draw of ``step``: deterministic, it loads version ``step - k`` at the fixed
        decode step (a hook the engine calls between its decode steps), or when the draw ends."""
        return _DrawHook(self, step - self.k) if self.deterministic else contextlib.nullcontext()


class _DrawHook:
    def __init__(self, flight: InFlight, version: int):
        self.flight, self.version, self.loaded = flight, version, version <= 0

    def __enter__(self) -> _DrawHook:
        engine = self.flight.engine
        self.start = engine.decode_steps
        if not self.loaded:
            engine.between_steps = self._between
        return self

    def _between(self) -> None:
        engine = self.flight.engine
        if not self.loaded and engine.decode_steps - self.start >= self.flight.update_at:
            self.loaded = True
            self.flight._take(self.version)

    def __exit__(self, kind, exc, tb) -> None:
        self.flight.engine.between_steps = None
        if exc is None and not self.loaded:  # a draw shorter than update_at decode steps: at its end
            self.loaded = True
            self.flight._take(self.version)


def _called(fn: Callable[[], Any]) -> Future:
    """``fn()`` called now, its result (or exception, raised at ``.result()``) in a finished future."""
    fut: Future = Future()
    try:
        fut.set_result(fn())
    except BaseException as exc:  # surfaces at .result(), like a worker's exception
        fut.set_exception(exc)
    return fut

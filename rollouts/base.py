"""What every engine shares, so an engine implements only its decode and its weight load.

**Requests.** ``submit(prompt, sampling, seed)`` queues one prompt (its ``sampling.n`` rows form its
group) and returns a future of its ``Group``; it is thread-safe and may be called at any time.
``step()`` is one scheduler iteration, run by the one thread that owns the engine: it applies the
weight loads waiting, then the engine's ``_step``. An engine that decodes token by token
(``steps_tokens = True``, the static one) admits queued requests into free rows, decodes one token
for every running row and resolves the groups that completed. Any other engine keeps the default
``_step``: everything queued in one batched call of its ``_generate`` (one call per sampling setting).
``generate(prompts, sampling, on_group)`` submits every prompt and drives ``step()`` until its groups
are done (or, while a background runner owns the engine, waits for them): its behaviour and its
callers are what they were. ``start()`` hands the engine to a background thread (``EngineLoop``) that
steps while there is work and sleeps otherwise; ``close()`` stops it and fails what is pending.

**Weights.** ``load_weights(named_tensors, version)`` is applied between two steps: at once when no
one is stepping, else by the stepping thread before its next step (the caller waits), so running rows
are never dropped. ``version`` becomes ``engine.version``, and every sampled token records the version
of the weights that sampled it (``Completion.versions``). The base times the load (``last_sync_s``)
and, for an engine that says which names and shapes it takes (``weight_shapes``), refuses an unknown
name or a wrong shape before the tensor reaches the engine's ``_load_weights``.

``generate`` turns prompts into token ids (text is tokenized without special tokens; ids are used
as given), applies the one seed rule (``SamplingConfig.prompt_seeds``) and records when each group
finished (``last_group_latencies``).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import torch

from rollouts.types import Completion, Group, OnGroup, Prompt, SamplingConfig

NO_VERSION = -1  # what a token sampled before any versioned load records (Completion.versions)


@dataclass(eq=False)
class Request:
    """One submitted prompt: its ids and text, its seed (None: unseeded), its sampling (``max_tokens``:
    its own limit) and the future of its group."""

    prompt_ids: list[int]
    text: str
    seed: int | None
    sampling: SamplingConfig
    future: Future = field(default_factory=Future)


@dataclass(eq=False)
class _Load:
    named_tensors: Iterable[tuple[str, torch.Tensor]]
    version: int | None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class EngineBase:
    """Base of the engines (``rollouts.types.Engine``). A subclass calls ``_set_tokenizer`` and sets
    ``startup_s`` in its constructor, and implements ``_generate`` and ``_load_weights`` (and
    ``weight_shapes`` when it can name what it takes); an engine that decodes token by token also
    implements ``_step`` (and sets ``steps_tokens``). An engine's ``close`` calls ``super().close()``."""

    tokenizer: Any
    eos_id: int | None = None
    pad_id: int | None = None
    startup_s: float = 0.0
    last_sync_s: float = 0.0
    last_sync_path: str = ""  # how the latest load went, where an engine has more than one way
    last_group_latencies: list[float]
    per_prompt_max_tokens: bool = False  # honours SamplingConfig.max_tokens_each
    # step() decodes one token for every running row (True), or runs everything queued as one batched
    # call (False: requests submitted while it runs wait for the next step)
    steps_tokens: bool = False
    version: int | None = None  # the version of the weights loaded last (None: never given)
    decode_steps: int = 0  # step() calls so far (a clock for loads at fixed steps)
    # called by the stepping thread at the start of every step(), before the loads waiting are applied; it may
    # load weights itself (train.async.deterministic loads at a fixed decode step of a draw)
    between_steps: Callable[[], None] | None = None

    def _set_tokenizer(self, tokenizer) -> None:
        """The engine's tokenizer; EOS from it, and padding with its pad token (EOS when it has none)."""
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.last_group_latencies = []

    # -- request state (created on first use, so subclasses need not call a base constructor) --------
    def _requests(self) -> _RequestState:
        state = self.__dict__.get("_request_state")
        if state is None:
            state = self.__dict__.setdefault("_request_state", _RequestState())
        return state

    # -- requests -------------------------------------------------------------------------
    def prompt_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Each prompt's token ids: text tokenized without special tokens, ids as given."""
        with self._requests().tokenizer_lock:  # a fast tokenizer is not safe to call from two threads at once
            return [list(p) if not isinstance(p, str) else self.tokenizer(p, add_special_tokens=False)["input_ids"]
                    for p in prompts]

    def submit(self, prompt: Prompt, sampling: SamplingConfig, seed: int | None = None) -> Future:
        """Queue ``prompt``; its ``sampling.n`` rows, sampled with ``seed`` (None: ``sampling``'s rule for a
        one-prompt call, else unseeded), form the ``Group`` the returned future resolves to. Thread-safe."""
        if sampling.max_tokens_each is not None:
            raise ValueError("submit: SamplingConfig.max_tokens_each is per call; a request's limit is max_tokens")
        if seed is None and (sampling.seed is not None or sampling.seeds is not None):
            seed = sampling.prompt_seeds(1)[0]
        (ids,) = self.prompt_ids([prompt])
        if isinstance(prompt, str):
            text = prompt
        else:
            with self._requests().tokenizer_lock:
                text = self.tokenizer.decode(prompt)
        request = Request(ids, text, seed, dataclasses.replace(sampling, seed=None, seeds=None))
        self._check_request(request)
        state = self._requests()
        with state.cond:
            if state.closed:
                raise RuntimeError(f"{type(self).__name__}.submit: the engine is closed")
            state.queue.append(request)
            state.cond.notify_all()
        return request.future

    def _check_request(self, request: Request) -> None:
        """Refuse a request the engine cannot sample (raise ValueError naming why)."""

    def step(self) -> int:
        """One scheduler iteration (see the module docstring), by the thread that owns the engine. Returns
        the number of rows (``steps_tokens``) or requests still running or queued; 0: idle."""
        state = self._requests()
        with state.step_lock:
            if self.between_steps is not None:  # the caller's hook (e.g. a load at a fixed decode step)
                self.between_steps()
            self._apply_loads()
            self.decode_steps += 1
            try:
                return self._step(state)
            except BaseException as exc:
                self._fail_running(exc)
                raise

    def pending(self) -> int:
        """Rows (or requests) running or queued, as ``step`` last left them plus what was queued since."""
        state = self._requests()
        with state.cond:
            return self._running() + sum(r.sampling.n for r in state.queue)

    def _take_queued(self) -> list[Request]:
        """Every queued request not cancelled, now running (its future marked so)."""
        state = self._requests()
        with state.cond:
            taken, state.queue = list(state.queue), deque()
        return [r for r in taken if r.future.set_running_or_notify_cancel()]

    def _running(self) -> int:
        """Rows or requests the engine is working on between steps (the default ``_step`` keeps none)."""
        return 0

    def _fail_running(self, exc: BaseException) -> None:
        """A step raised: the engine fails the requests it had taken (the default ``_step`` does it itself)."""

    def _step(self, state: _RequestState) -> int:
        """The batched fallback: every queued request in one ``_generate`` call per sampling setting."""
        by_setting: dict[tuple, list[Request]] = {}
        for r in self._take_queued():
            by_setting.setdefault(_setting(r.sampling), []).append(r)
        for requests in by_setting.values():
            seeds = [r.seed for r in requests]
            if all(s is None for s in seeds):
                seeds = None  # unseeded: the engine's own randomness, as a call without seeds
            else:
                seeds = [s if s is not None else secrets.randbits(31) for s in seeds]
            version = self.version

            def finished(i: int, group: Group, requests=requests, version=version) -> None:
                if version is not None:
                    for c in group.completions:
                        c.versions = [version] * len(c.token_ids)
                requests[i].future.set_result(group)

            try:
                self._generate([r.prompt_ids for r in requests], [r.text for r in requests], seeds,
                               requests[0].sampling, finished)
            except BaseException as exc:  # noqa: BLE001 - every request of the call answers with it
                for r in requests:
                    if not r.future.done():
                        r.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
        return self.pending()

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 on_group: OnGroup | None = None) -> list[Group]:
        """The groups of ``prompts`` (``on_group(i, group)`` as each completes, on the calling thread):
        every prompt submitted, then steps driven here, or awaited while a background runner owns the engine."""
        seeds = sampling.prompt_seeds(len(prompts))
        limits = [sampling.max_tokens] * len(prompts)
        if sampling.max_tokens_each is not None:
            if not self.per_prompt_max_tokens:
                raise ValueError(f"SamplingConfig.max_tokens_each: {type(self).__name__} has one max_tokens per call; "
                                 "the static engine takes one per prompt")
            if len(sampling.max_tokens_each) != len(prompts):
                raise ValueError(f"SamplingConfig.max_tokens_each: {len(sampling.max_tokens_each)} limits for "
                                 f"{len(prompts)} prompts")
            limits = list(sampling.max_tokens_each)
        plain = dataclasses.replace(sampling, seed=None, seeds=None, max_tokens_each=None)
        t0 = time.perf_counter()
        futures = [self.submit(p, dataclasses.replace(plain, max_tokens=limit), None if seeds is None else seeds[i])
                   for i, (p, limit) in enumerate(zip(prompts, limits))]
        groups: list[Group | None] = [None] * len(prompts)
        latencies = [0.0] * len(prompts)
        waiting = dict(enumerate(futures))
        state = self._requests()
        try:
            while waiting:
                if state.runner is None and state.step_lock.acquire(blocking=False):
                    try:
                        self.step()
                    finally:
                        state.step_lock.release()
                else:  # another thread steps the engine: wait for it
                    wait(list(waiting.values()), timeout=None if state.runner is not None else 0.01,
                         return_when=FIRST_COMPLETED)
                for i in [i for i, f in waiting.items() if f.done()]:
                    groups[i] = waiting.pop(i).result()
                    latencies[i] = time.perf_counter() - t0
                    if on_group is not None:
                        on_group(i, groups[i])
        finally:
            for f in waiting.values():
                f.cancel()  # those not admitted yet are dropped
        self.last_group_latencies = latencies
        return groups  # type: ignore[return-value]

    def _generate(self, prompt_ids: list[list[int]], texts: list[str], seeds: list[int] | None,
                  sampling: SamplingConfig, finished: OnGroup) -> list[Group]:
        """The groups of the prompts ``prompt_ids`` (``texts``: each prompt's text, for its ``Group``), sampled
        with ``seeds`` (one per prompt; None: unseeded). Call ``finished(i, group)`` once per group, as soon
        as it is complete."""
        raise NotImplementedError

    # -- a background runner -------------------------------------------------------------
    def start(self) -> EngineLoop:
        """Hand the engine to a background thread that steps it while there is work (``EngineLoop``)."""
        state = self._requests()
        with state.cond:
            if state.runner is None:
                state.runner = EngineLoop(self)
            return state.runner

    def stop(self, reason: str = "the engine was stopped") -> None:
        """Stop the background runner (if any) and fail every pending request with ``RuntimeError(reason)``."""
        state = self._requests()
        with state.cond:
            runner, state.runner = state.runner, None
        if runner is not None:
            runner.join()
        with state.step_lock:
            self._fail_running(RuntimeError(reason))
        for r in self._take_queued():
            r.future.set_exception(RuntimeError(reason))

    # -- weights ----------------------------------------------------------------------
    def weight_shapes(self) -> Mapping[str, torch.Size] | None:
        """The parameter names this engine takes and their shapes (None: it checks names itself)."""
        return None

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Load the tensors between two steps (waiting for the step under way, if any); ``version`` then
        becomes ``self.version``, recorded by every token sampled with these weights."""
        load = _Load(named_tensors, version)
        state = self._requests()
        with state.cond:
            state.loads.append(load)
            state.cond.notify_all()
        while not load.done.is_set():
            if state.step_lock.acquire(timeout=0.005):  # no one stepping: load now (else the stepper does)
                try:
                    self._apply_loads()
                finally:
                    state.step_lock.release()
        if load.error is not None:
            raise load.error

    def _apply_loads(self) -> None:
        state = self._requests()
        while True:
            with state.cond:
                if not state.loads:
                    return
                load = state.loads.popleft()
            try:
                t0 = time.perf_counter()
                shapes = self.weight_shapes()
                self._load_weights(load.named_tensors if shapes is None else _checked(load.named_tensors, shapes))
                self.last_sync_s = time.perf_counter() - t0
                if load.version is not None:
                    self.version = load.version
            except BaseException as exc:  # noqa: BLE001 - raised in the loading thread
                load.error = exc
            finally:
                load.done.set()

    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Put each ``(name, tensor)`` (the model's own parameter names) into the engine."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the runner and fail pending requests; an engine frees its own resources after this."""
        state = self._requests()
        self.stop("the engine was closed")
        with state.cond:
            state.closed = True


class _RequestState:
    """The queue and the locks of an engine's requests."""

    def __init__(self):
        self.cond = threading.Condition()  # guards queue, loads, runner, closed
        self.queue: deque[Request] = deque()
        self.loads: deque[_Load] = deque()
        self.step_lock = threading.RLock()  # held for one step (or one weight load)
        self.tokenizer_lock = threading.Lock()
        self.runner: EngineLoop | None = None
        self.closed = False


class EngineLoop:
    """A thread that owns an engine: it calls ``engine.step()`` while there is work (rows running, requests
    queued or loads waiting) and sleeps on a condition otherwise. Built by ``engine.start()``; ``engine.stop()``
    or ``engine.close()`` ends it. A step that raises fails the requests it held; the loop goes on."""

    def __init__(self, engine: EngineBase):
        self.engine = engine
        self.steps = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=f"{type(engine).__name__}-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        e, state = self.engine, self.engine._requests()
        busy = False
        while True:
            with state.cond:
                while state.runner is self and not busy and not state.queue and not state.loads:
                    state.cond.wait()
                if state.runner is not self:
                    return
            try:
                busy = e.step() > 0
                self.steps += 1
            except Exception as exc:  # noqa: BLE001 - the requests it held have its error; keep serving
                self.errors.append(exc)
                busy = False

    def join(self) -> None:
        with self.engine._requests().cond:
            self.engine._requests().cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()


def _setting(s: SamplingConfig) -> tuple:
    """What requests sampled in one batched call must share."""
    return (s.n, s.temperature, s.top_p, s.max_tokens, tuple(s.stop), s.ignore_eos, s.detokenize)


def _checked(named_tensors: Iterable[tuple[str, torch.Tensor]],
             shapes: Mapping[str, torch.Size]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors as they come, each checked first: an unknown name is a KeyError, a wrong shape a ValueError."""
    for name, tensor in named_tensors:
        shape = shapes.get(name)
        if shape is None:
            raise KeyError(f"load_weights: unknown parameter {name!r}")
        if tuple(shape) != tuple(tensor.shape):
            raise ValueError(f"load_weights: {name!r} has shape {tuple(tensor.shape)}, the engine's is {tuple(shape)}")
        yield name, tensor


__all__ = ["EngineBase", "EngineLoop", "Request", "NO_VERSION", "Completion"]

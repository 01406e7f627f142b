"""One thread owns the engine; requests reach it through a queue and are sampled in batches.

An engine is not thread-safe and samples a batch of prompts far faster than the same prompts one
at a time, so HTTP handlers never call it: they ``submit`` a prompt with its settings and wait on
the returned future. The engine thread takes the first pending prompt, then keeps taking prompts
while they keep coming: it stops at a gap of ``window_s`` without a new one, after ``max_wait_s`` in
all, or at ``max_batch`` sequences. Concurrent clients do not arrive at once (64 agents over HTTP on
two cores arrive over tens of milliseconds), and a fixed window would cut them into a small first
batch and a large second one, each decoding for as long as its longest row.

When the server knows who may still call (``waiting_on``: the sessions a trainer opened for its
agents, rlvr.serve.records), the batch also ends the moment every one of them has a prompt in it:
no one else is coming, and waiting out the gap would leave the engine idle for ``window_s`` on every
turn (with short turns, a third of the time). And the gap ends it only once half of them are in:
when a batch's replies go out, the first few agents call again at once, then the HTTP side is busy
writing the other replies for longer than the gap, and a batch of those few would decode for as long
as the full one that follows (a tiny model's step costs about the same at 3 rows as at 64). Sessions
busy elsewhere (a slow tool) cost the others at most ``max_wait_s``. It then splits what it
took by sampling settings (``Settings``: prompts sampled together must share them) and makes one
``engine.generate`` call per settings, in arrival order. Prompts that arrive while the engine works
wait in the queue and form the next batch.

Every prompt is sampled with a seed of its own (``SamplingConfig.seeds``): the request's seed when
it gave one, else a random one, so prompts with and without seeds share a call and a prompt's
samples depend on its seed only (as far as the engine keeps that promise across batches).

An engine that decodes token by token (``steps_tokens``: the static engine's scheduler, rollouts.base)
batches by itself: a prompt submitted while it decodes joins the running batch at its next step. With
such an engine there are no windows: each prompt goes straight to ``engine.submit`` and the engine
thread steps the engine while it has work. So a session whose call finished early makes its next call
while the rest of the batch still decodes, a slow session holds no batch up, and a stall in the HTTP
side cannot cut a batch in two (each half decoding as long as the whole). On the tools base's bench
(rlvr.serve.bench) it is as fast as the windows, no faster: what the server costs there is the
requests' own Python (docs/results.md). Each prompt is answered as soon as its group finishes, in
both modes.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from dataclasses import dataclass

from rollouts.types import Completion, SamplingConfig


@dataclass(frozen=True)
class Settings:
    """The sampling settings prompts must share to be sampled in one engine call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()


@dataclass
class _Pending:
    prompt_ids: list[int]
    settings: Settings
    seed: int
    future: Future
    session: str | None = None


class Batcher:
    """``submit(prompt_ids, settings, seed)`` -> a future of the prompt's ``settings.n`` completions.

    ``max_batch``: the most sequences (prompts x n) one engine call takes (a single larger request
    still goes alone); ``window_s``: the gap between two arrivals that ends a batch; ``max_wait_s``: the
    longest a batch waits for company (from its first prompt); ``waiting_on``: returns the sessions that
    may still call (a batch that holds a prompt of each of them ends at once; None or an empty set:
    the gap rule alone)."""

    def __init__(self, engine, max_batch: int = 64, window_s: float = 0.05, max_wait_s: float = 0.5,
                 waiting_on: Callable[[], AbstractSet[str]] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine, self.max_batch, self.window_s, self.max_wait_s = engine, max_batch, window_s, max_wait_s
        self.waiting_on = waiting_on
        # the engine's own continuous batching (see the module doc), else windows and engine.generate
        self.continuous = bool(getattr(engine, "steps_tokens", False)) and callable(getattr(engine, "submit", None))
        self.prompts = 0  # prompts handed to the engine
        self.calls = 0  # engine.generate calls made (windowed mode; a test reads it to see batching happen)
        self.batch_sizes: list[int] = []  # prompts per engine call, most recent last (the last 1000)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._wake = threading.Event()  # continuous mode: work was submitted, or close
        self._closing = False
        self._thread = threading.Thread(target=self._steps if self.continuous else self._run, name="rlvr-serve-engine",
                                        daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], settings: Settings, seed: int | None = None,
               session: str | None = None) -> tuple[Future, int]:
        """Queue one prompt (of ``session``, if any); returns the future of its completions and the seed it
        is sampled with."""
        if not self._thread.is_alive():
            raise RuntimeError("the engine thread has stopped")
        seed = secrets.randbelow(2**31) if seed is None else seed
        future: Future = Future()
        if self.continuous:
            self._submit(list(prompt_ids), settings, seed, future)
            return future, seed
        self._queue.put(_Pending(list(prompt_ids), settings, seed, future, session))
        return future, seed

    def close(self) -> None:
        """Stop the engine thread after the batch (windowed) or the step (continuous) it is on; prompts
        still queued or decoding fail."""
        if self.continuous:
            self._closing = True
            self._wake.set()
            self._thread.join()
            self.engine.stop("the server is shutting down")  # fails what the engine still holds
            return
        self._queue.put(None)
        self._thread.join()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.future.set_exception(RuntimeError("the server is shutting down"))

    # -- continuous mode: the engine batches ----------------------------------------------
    def _submit(self, prompt_ids: list[int], settings: Settings, seed: int, future: Future) -> None:
        sampling = SamplingConfig(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                                  max_tokens=settings.max_tokens, stop=settings.stop)
        future.set_running_or_notify_cancel()
        try:
            inner = self.engine.submit(prompt_ids, sampling, seed)
        except Exception as exc:  # noqa: BLE001 - a prompt the engine refuses: its request answers with it
            future.set_exception(exc)
            return

        def answer(done: Future) -> None:  # on the engine thread, as the prompt's group finishes
            if done.cancelled():
                future.set_exception(RuntimeError("the engine dropped the prompt"))
            elif done.exception() is not None:
                future.set_exception(done.exception())
            else:
                completions: list[Completion] = done.result().completions
                future.set_result(completions)

        inner.add_done_callback(answer)
        self.prompts += 1
        self._wake.set()

    def _steps(self) -> None:
        """Step the engine while it has work; sleep until a prompt is submitted otherwise."""
        while not self._closing:
            try:
                busy = self.engine.step() > 0
            except Exception:  # noqa: BLE001 - the step failed the requests it held (rollouts.base); go on
                busy = self.engine.pending() > 0  # those still queued
            if not busy:
                self._wake.wait()
                self._wake.clear()

    # -- the engine thread ------------------------------------------------------------
    def _take(self) -> list[_Pending] | None:
        """The next batch: the first pending prompt, then those that follow it without a gap of
        ``window_s``, for ``max_wait_s`` at most (None: close)."""
        first = self._queue.get()
        if first is None:
            return None
        batch, size = [first], first.settings.n
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch and not self._everyone_in(batch):
            gap = self.window_s if self._half_in(batch) else float("inf")
            try:
                item = self._queue.get(timeout=max(0.0, min(gap, deadline - time.monotonic())))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close after this batch
                break
            batch.append(item)
            size += item.settings.n
        return batch

    def _everyone_in(self, batch: list[_Pending]) -> bool:
        """Whether every session that may still call has a prompt in ``batch`` (False when none is known)."""
        waiting = self.waiting_on() if self.waiting_on is not None else frozenset()
        return bool(waiting) and waiting <= {it.session for it in batch}

    def _half_in(self, batch: list[_Pending]) -> bool:
        """Whether the gap rule applies: no sessions are known, or half of them have a prompt in ``batch``."""
        waiting = self.waiting_on() if self.waiting_on is not None else frozenset()
        return not waiting or 2 * len(waiting & {it.session for it in batch}) >= len(waiting)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            by_settings: dict[Settings, list[_Pending]] = {}
            for item in batch:
                by_settings.setdefault(item.settings, []).append(item)
            for settings, items in by_settings.items():
                self._sample(settings, items)

    def _sample(self, settings: Settings, items: list[_Pending]) -> None:
        items = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not items:
            return

        def finished(i: int, group) -> None:  # a prompt's reply goes out while the engine samples the rest
            if not items[i].future.done():
                items[i].future.set_result(group.completions)

        try:
            sampling = SamplingConfig(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                                      max_tokens=settings.max_tokens, stop=settings.stop,
                                      seeds=[it.seed for it in items])
            groups = self.engine.generate([it.prompt_ids for it in items], sampling, finished)
            if len(groups) != len(items):
                raise RuntimeError(f"the engine returned {len(groups)} groups for {len(items)} prompts")
        except Exception as exc:  # noqa: BLE001 - each waiting request answers with it; the thread goes on
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        self.calls += 1
        self.prompts += len(items)
        self.batch_sizes = [*self.batch_sizes[-999:], len(items)]
        for it, group in zip(items, groups):
            if not it.future.done():  # an engine that does not report groups as they finish
                completions: list[Completion] = group.completions
                it.future.set_result(completions)

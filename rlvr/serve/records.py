"""What the server recorded: for every request of a session, the exact tokens in and out.

A request that names a session (``/s/<session>/v1/...`` in its URL, or an ``X-Session-Id`` header)
is recorded as one ``Call`` per prompt: the prompt ids the engine was given (after the chat
template, for a chat request), each sampled choice's ids and the engine's log-prob of each id
(``rollouts.Completion.logprobs``: the model's own, before temperature and top-p), and the request
body as it was validated (a chat request's ``messages`` and ``tools``). These are the ids the engine
saw and gave back, never re-tokenised from text, so a training sequence built from them is exact.

A request without a session is answered and not recorded: a long-running ``rlvr serve`` keeps no
history. ``SessionRecords.pop(session)`` hands over a session's calls and forgets them.

A trainer that runs agents (rlvr.agents) ``open``s each session with a seed before the agent starts:
a call of that session that gives no seed of its own is sampled with the session's ``k``-th seed
(``session_seed``), so a deterministic agent samples the same tokens in every run with the same
seeds; opened with a ``temperature``, a call that gives none of its own is sampled at it (the run's
``sampling.temperature`` in training, 0 for a greedy evaluation). ``close(session)`` refuses its later calls (an agent that overran its deadline cannot reach
the engine after its sample was taken).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One sampled choice: ``token_ids[i]`` came with the engine's log-prob ``logprobs[i]``."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # the engine's: "stop" (EOS or a stop string) | "length"
    text: str  # the engine's text of ``token_ids`` (cut at a stop string)


@dataclass(frozen=True)
class Call:
    """One prompt of one request and what the engine sampled for it."""

    session: str
    endpoint: str  # "completions" | "chat.completions"
    prompt_ids: list[int]
    samples: list[Sample]
    seed: int  # the prompt's engine seed (its samples depend on it alone; see rlvr.serve.batcher)
    request: dict[str, Any] = field(repr=False)  # the validated body (chat: its messages and tools)
    time: float = field(default_factory=time.time)
    # the text ``prompt_ids`` stand for (a chat request: its rendered template); None for a prompt given as ids
    prompt_text: str | None = field(default=None, repr=False)


_MASK = (1 << 62) - 1


def session_seed(seed: int, k: int) -> int:
    """The seed of the ``k``-th prompt (from 0) sent without a seed in a session opened with ``seed``."""
    return ((seed * 1_000_003 + k) * 10_007 + 7) & _MASK


class SessionClosed(Exception):
    """A request of a session that was closed (its agent's sample is over)."""


class SessionRecords:
    """The calls of each session, in the order they finished. Thread-safe: the server adds, a trainer pops."""

    def __init__(self) -> None:
        self._calls: dict[str, list[Call]] = {}
        self._seeds: dict[str, list[int]] = {}  # open sessions: [base seed, prompts seeded so far]
        self._temperatures: dict[str, float] = {}  # open sessions' default temperatures
        self._open: set[str] = set()  # opened and not yet closed: who may still call (the batcher asks)
        self._closed: set[str] = set()
        self._lock = threading.Lock()

    def open(self, session: str, seed: int | None = None, temperature: float | None = None) -> None:
        """Start recording ``session``; with ``seed``, its unseeded prompts get seeds derived from it; with
        ``temperature``, its requests without a temperature are sampled at it."""
        with self._lock:
            self._closed.discard(session)
            self._open.add(session)
            self._calls.pop(session, None)
            if seed is not None:
                self._seeds[session] = [seed, 0]
            if temperature is not None:
                self._temperatures[session] = temperature

    def close(self, session: str) -> None:
        """Refuse the session's later requests (``check_open`` raises ``SessionClosed``)."""
        with self._lock:
            self._closed.add(session)
            self._open.discard(session)
            self._seeds.pop(session, None)
            self._temperatures.pop(session, None)

    def open_sessions(self) -> frozenset[str]:
        """The sessions opened and not closed (a trainer's agents still running)."""
        with self._lock:
            return frozenset(self._open)

    def check_open(self, session: str | None) -> None:
        if session is not None:
            with self._lock:
                if session in self._closed:
                    raise SessionClosed(session)

    def next_seed(self, session: str | None) -> int | None:
        """The next derived seed of an opened ``session``; None for a session opened without one (or none)."""
        if session is None:
            return None
        with self._lock:
            state = self._seeds.get(session)
            if state is None:
                return None
            state[1] += 1
            return session_seed(state[0], state[1] - 1)

    def temperature(self, session: str | None) -> float | None:
        """The default temperature ``session`` was opened with (None: none, or no session)."""
        if session is None:
            return None
        with self._lock:
            return self._temperatures.get(session)

    def add(self, call: Call) -> None:
        with self._lock:
            if call.session not in self._closed:  # a call that finished after its session closed is not kept
                self._calls.setdefault(call.session, []).append(call)

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._calls)

    def calls(self, session: str) -> list[Call]:
        """The session's calls so far (a copy of the list; empty for an unknown session)."""
        with self._lock:
            return list(self._calls.get(session, ()))

    def pop(self, session: str) -> list[Call]:
        """The session's calls, forgotten here."""
        with self._lock:
            return self._calls.pop(session, [])

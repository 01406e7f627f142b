"""What the server recorded: for every request of a session, the exact tokens in and out.

A request that names a session (``/s/<session>/v1/...`` in its URL, or an ``X-Session-Id`` header)
is recorded as one ``Call`` per prompt: the prompt ids the engine was given (after the chat
template, for a chat request), each sampled choice's ids and the engine's log-prob of each id
(``rollouts.Completion.logprobs``: the model's own, before temperature and top-p), and the request
body as it was validated (a chat request's ``messages`` and ``tools``). These are the ids the engine
saw and gave back, never re-tokenised from text, so a training sequence built from them is exact.

A request without a session is answered and not recorded: a long-running ``rlvr serve`` keeps no
history. ``SessionRecords.pop(session)`` hands over a session's calls and forgets them.
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


class SessionRecords:
    """The calls of each session, in the order they finished. Thread-safe: the server adds, a trainer pops."""

    def __init__(self) -> None:
        self._calls: dict[str, list[Call]] = {}
        self._lock = threading.Lock()

    def add(self, call: Call) -> None:
        with self._lock:
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

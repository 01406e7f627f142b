"""An OpenAI-compatible server in front of a rollout engine, recording every token it samples.

* ``Server`` (rlvr.serve.server): FastAPI + uvicorn on a thread, bound to 127.0.0.1 on a free port
  by default, always behind a bearer token: ``/v1/models``, ``/v1/completions``,
  ``/v1/chat/completions`` (the tokenizer's chat template; Hermes/Qwen ``<tool_call>`` blocks become
  ``tool_calls``), and the same under ``/s/<session>/v1`` for recorded sessions.
* ``Batcher`` (rlvr.serve.batcher): the one thread that owns the engine; concurrent requests with
  the same sampling settings are sampled in one ``engine.generate`` call.
* ``SessionRecords`` (rlvr.serve.records): per session, every call's prompt ids, sampled ids and
  the engine's log-probs, for exact trajectories.
* rlvr.serve.protocol: the request bodies (unknown fields refused), the limits, the reply bodies.

``rlvr serve MODEL`` (rlvr.commands.serve) runs it without training; see docs/serving.md.
"""

from __future__ import annotations

from rlvr.serve.batcher import Batcher, Settings
from rlvr.serve.protocol import ApiError, Limits
from rlvr.serve.records import Call, Sample, SessionRecords
from rlvr.serve.server import Server, is_loopback

__all__ = ["ApiError", "Batcher", "Call", "Limits", "Sample", "Server", "SessionRecords", "Settings", "is_loopback"]

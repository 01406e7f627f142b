"""Bring your own agent: code written against the ``openai`` client, trained through a recording server.

* ``AgentConfig`` (rlvr.agents.config): the ``agent:`` section.
* ``AgentRunner`` (rlvr.agents.runner): one ``rlvr.serve.Server`` per run on the rollout engine, the
  agent called once per sample, failures kept out of the baseline.
* ``session_sequences`` (rlvr.agents.sequences): a session's recorded calls as exact training sequences.
* ``agent_metrics`` (rlvr.agents.metrics): per-step counts of failures, calls and sequences.

It sits beside rlvr.envs on the rollout side and never imports the train side (an import-linter
contract): a session becomes ``rlvr.envs`` trajectories, packed into tensors by rlvr.train like any
other episode. See docs/agents.md.
"""

from __future__ import annotations

from rlvr.agents.config import AgentConfig
from rlvr.agents.metrics import agent_metrics
from rlvr.agents.sequences import session_sequences

__all__ = ["AgentConfig", "AgentRunner", "agent_metrics", "session_sequences"]


def __getattr__(name: str):
    if name == "AgentRunner":  # the runner pulls in the server, scoring and engines: only when a run uses it
        from rlvr.agents.runner import AgentRunner

        return AgentRunner
    raise AttributeError(name)

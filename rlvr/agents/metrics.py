"""Per-step metrics of agent sessions, from the groups a step drew (rlvr.draw.rollout_metrics adds them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FAILURES = ("agent_raised", "agent_timeout", "agent_bad_return", "agent_no_calls")


def agent_metrics(groups: Sequence[Any]) -> dict[str, float]:
    """``agent/<failure>``: failed sessions of each kind (rlvr.agents.runner); ``agent/calls_mean``: model
    calls per session that did not fail; ``agent/sequences_mean``: training sequences per such session
    (1 when every call continued the previous one). Empty when no group came from an agent."""
    sessions = [(t, seqs) for g in groups if getattr(g, "sequences", None)
                for t, seqs in zip(g.episodes, g.sequences)]
    if not sessions:
        return {}
    failed = [t.error or "" for t, _ in sessions if t.finish_reason == "env_error"]
    out = {f"agent/{kind}": float(sum(e.startswith(kind + ":") for e in failed)) for kind in FAILURES}
    ok = [seqs for t, seqs in sessions if t.finish_reason != "env_error"]
    if ok:
        out["agent/calls_mean"] = sum(sum(s.turns for s in seqs) for seqs in ok) / len(ok)
        out["agent/sequences_mean"] = sum(len(seqs) for seqs in ok) / len(ok)
    return out

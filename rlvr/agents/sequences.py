"""A session's recorded calls (rlvr.serve.records) as exact training sequences.

Every call holds the prompt ids the engine was given and the ids it sampled with their log-probs.
When an agent sends back the conversation it was given, the next call's prompt ids start with the
previous call's prompt ids followed by its sampled ids (the server reuses those ids rather than
re-tokenising the history: rlvr.serve.app), and the two calls are one sequence: the ids between
the sampled ids and the next turn (a tool's output, the next user message, the template's markup)
become an environment segment, appended as ids with no loss on them.

Matching is on ids, so it is exact by construction: a model segment's context in the sequence is
the very context the engine sampled it in. An agent that edits or drops history (summarises,
truncates, rewrites a message) sends a prompt that continues no earlier call: it starts a new
sequence whose prompt is that call's prompt. A session thus becomes one or more sequences; each
sampled token is in exactly one of them, with its engine log-prob.

* A sampled end token (EOS, the template's end of turn) that the next prompt leaves out (an agent
  that continues a completion which stopped at EOS) is dropped from its segment: the sequence keeps
  the ids that the next call was conditioned on.
* A call that extends a sequence consumes it: a second call that continues the same point (a retry)
  starts a sequence of its own, so no sampled token is trained twice.
* A call with several choices (``n > 1``) continues its sequence with its first choice; each other
  choice is a sequence of its own on the call's prompt.

How a sample with several sequences is trained (rlvr.train.batch): each sequence is a row with the
sample's reward; the sample counts once in its group's baseline, and every row gets its advantage.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlvr.envs.trajectory import Budget, EnvSegment, ModelSegment, Segment, Trajectory


@dataclass
class _Chain:
    prompt_ids: list[int]
    segments: list[Segment] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # prompt + every segment's ids
    turns: int = 0


def _kept(chain: _Chain, prompt: Sequence[int], end_ids: Collection[int]) -> int | None:
    """How many of the chain's ids ``prompt`` continues: all of them, or all but a trailing end token the
    prompt left out; None when it continues neither."""
    n = len(chain.ids)
    if len(prompt) >= n and list(prompt[:n]) == chain.ids:
        return n
    last = chain.segments[-1] if chain.segments else None
    if isinstance(last, ModelSegment) and last.ids and last.ids[-1] in end_ids and len(prompt) >= n - 1 \
            and list(prompt[: n - 1]) == chain.ids[: n - 1]:
        return n - 1
    return None


def _trim_last(chain: _Chain) -> None:
    """Drop the chain's last id (an end token at the end of its last model segment)."""
    last = chain.segments[-1]
    assert isinstance(last, ModelSegment)
    chain.segments[-1] = ModelSegment(last.ids[:-1], last.logprobs[:-1], last.turn, last.version, last.finish,
                                      last.text)
    chain.ids = chain.ids[:-1]


def _append_model(chain: _Chain, sample: Any, version: int) -> None:
    chain.segments.append(ModelSegment(tuple(sample.token_ids), tuple(float(x) for x in sample.logprobs), chain.turns,
                                       version, "length" if sample.finish_reason == "length" else "stop", sample.text))
    chain.ids += list(sample.token_ids)
    chain.turns += 1


def session_sequences(calls: Sequence[Any], version: int = 0, end_ids: Collection[int] = ()) -> list[Trajectory]:
    """The exact training sequences of a session's ``calls`` (``rlvr.serve.Call``: ``prompt_ids`` and
    ``samples``, each with ``token_ids``, ``logprobs``, ``finish_reason``, ``text``); see the module doc.
    The last sequence is the one that holds the final call's first choice (the agent's final message);
    the others keep the order they started in. ``version``: the policy version that sampled them;
    ``end_ids``: the tokenizer's special ids (a trailing one the next prompt leaves out is dropped).
    Each sequence is a finished ``Trajectory`` whose finish reason is its last turn's. No calls: none."""
    chains: list[_Chain] = []
    final = -1
    open_: list[int] = []  # indices of chains a later call may extend
    for call in calls:
        prompt = list(call.prompt_ids)
        for k, sample in enumerate(call.samples):
            parent = None
            if k == 0:
                best = -1
                for idx in open_:
                    kept = _kept(chains[idx], prompt, end_ids)
                    if kept is not None and kept > best:
                        parent, best = idx, kept
            if parent is None:
                chain = _Chain(prompt, ids=list(prompt))
                chains.append(chain)
                open_.append(len(chains) - 1)
            else:
                chain = chains[parent]
                if best < len(chain.ids):
                    _trim_last(chain)
                between = prompt[len(chain.ids):]
                if between:
                    chain.segments.append(EnvSegment(tuple(between), chain.turns - 1))
                    chain.ids += between
            _append_model(chain, sample, version)
            if k == 0:
                final = parent if parent is not None else len(chains) - 1
    if not chains:
        return []
    order = [i for i in range(len(chains)) if i != final] + [final]
    return [_trajectory(chains[i]) for i in order]


def _trajectory(chain: _Chain) -> Trajectory:
    models = [s for s in chain.segments if isinstance(s, ModelSegment)]
    budget = Budget(max_turns=max(1, len(models)), max_turn_tokens=max([1, *(len(s.ids) for s in models)]))
    return Trajectory(tuple(chain.prompt_ids), budget, tuple(chain.segments), models[-1].finish,
                      infos=tuple({} for _ in models))

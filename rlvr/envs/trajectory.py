"""Token-in/token-out episodes: the prompt ids, then model segments and environment segments.

A ``Trajectory`` is what the learner trains on, token for token. A model segment holds the ids the
engine sampled, the engine's log-prob of each, the turn index and the policy version that sampled
it; an environment segment holds an observation's ids, appended as ids. History is never
re-rendered from text and re-tokenised (``tok(a + b) != tok(a) + tok(b)`` for most tokenizers), so
the ids here are exactly the ids the engine was given and gave back.

Per token (``token_ids()`` order): ``sources()`` (prompt / model / env), ``loss_mask()`` (1 on
model tokens only), ``engine_logprobs()`` (0 off model tokens), ``versions()`` and ``turns()``
(-1 where they do not apply).

Budgets (``Budget``) are checked as the episode grows, by ``append_turn``, ``append_observation``
and ``record_step``, which return a new trajectory (a ``Trajectory`` is frozen; its segments are
shared, never copied). An episode that stops has a ``finish_reason``:

* ``stop``: the environment ended it after a model turn that ended on its own (EOS or a stop string);
  the one-turn case of a completion that stopped.
* ``length``: the environment ended it after a model turn that hit ``max_turn_tokens``; the one-turn
  case of a completion cut at ``max_tokens``.
* ``max_turns``: the model took ``max_turns`` turns and the environment had not ended the episode.
* ``max_tokens``: ``max_total_tokens`` (prompt + every segment) ran out: a model turn was cut by it,
  or an observation did not fit with room for one more model token (it is then not appended).
* ``context``: as ``max_tokens``, where the binding limit was the model's context length.
* ``env_error``: the environment raised; the episode is kept (``error`` says why) so that the
  caller can keep it out of its group's baseline instead of scoring it 0.

Nothing here knows engines, tokenizers, tensors or text: ``rlvr.train.episodes`` packs
trajectories into the learner's tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

FINISH_REASONS = ("stop", "length", "max_turns", "max_tokens", "context", "env_error")
# Finish reasons of an episode whose last model turn was cut short (DAPO's overlong filter masks them).
TRUNCATED = ("length", "max_tokens", "context")


class Source(IntEnum):
    """Where a token came from."""

    PROMPT = 0
    MODEL = 1
    ENV = 2


@dataclass(frozen=True)
class Budget:
    """The limits one episode runs under (an ``EnvConfig`` resolved against the sampling settings and
    the model: see ``rlvr.envs.base.EnvBase.budget``).

    ``max_turn_tokens``: most tokens one model turn samples. ``max_total_tokens`` and ``context``:
    most tokens of the whole sequence (prompt + every segment), the run's budget and the model's
    context length (None: no limit); the smaller binds. ``max_observation_tokens``: an observation
    is cut to this many tokens (its head is kept; None: no cut)."""

    max_turns: int = 1
    max_turn_tokens: int = 128
    max_total_tokens: int | None = None
    max_observation_tokens: int | None = None
    context: int | None = None

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_turn_tokens < 1:
            raise ValueError(f"Budget: max_turns and max_turn_tokens must be >= 1, got {self}")
        for name in ("max_total_tokens", "max_observation_tokens", "context"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Budget.{name} must be >= 1 or None, got {value}")

    def total_limit(self) -> tuple[int | None, str]:
        """The binding limit on the sequence's length and the finish reason for reaching it."""
        if self.context is not None and (self.max_total_tokens is None or self.context < self.max_total_tokens):
            return self.context, "context"
        return self.max_total_tokens, "max_tokens"


@dataclass(frozen=True)
class ModelSegment:
    """One model turn: the sampled ids, the engine's log-prob of each, and who sampled them."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    turn: int  # 0 for the first model turn
    # the policy version (learner updates in the weights) that sampled it; with in-flight weight updates
    # (train.async.in_flight) a turn can span a load: then one version per token
    version: int | tuple[int, ...]
    finish: str  # "stop" (EOS or stop string) | "length" (cut at the turn's token limit)
    text: str = ""  # the engine's text of the ids (for the rubric and logs; never re-encoded)


@dataclass(frozen=True)
class EnvSegment:
    """One observation, appended as ids after model turn ``turn``."""

    ids: tuple[int, ...]
    turn: int  # the model turn this observation answers
    cut: int = 0  # tokens dropped from its end by ``max_observation_tokens``
    text: str = ""  # the observation's text as the environment wrote it (before any cut)


Segment = ModelSegment | EnvSegment


@dataclass(frozen=True)
class Trajectory:
    """One episode so far: ``prompt_ids``, then ``segments`` in order; ``finish_reason`` None while it runs."""

    prompt_ids: tuple[int, ...]
    budget: Budget = field(default_factory=Budget)
    segments: tuple[Segment, ...] = ()
    finish_reason: str | None = None
    error: str | None = None  # env_error: what the environment raised
    infos: tuple[dict[str, Any], ...] = ()  # the environment's ``info`` of each step (JSON-serialisable)

    # -- building ---------------------------------------------------------------------
    @classmethod
    def start(cls, prompt_ids: list[int] | tuple[int, ...], budget: Budget | None = None) -> Trajectory:
        """A new episode on ``prompt_ids``; finished at once (no model turn) when the prompt leaves no room."""
        traj = cls(tuple(prompt_ids), budget or Budget())
        limit, reason = traj.budget.total_limit()
        if limit is not None and len(traj.prompt_ids) >= limit:
            return dataclasses.replace(traj, finish_reason=reason)
        return traj

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(len(s.ids) for s in self.segments)

    def model_segments(self) -> list[ModelSegment]:
        return [s for s in self.segments if isinstance(s, ModelSegment)]

    @property
    def turns(self) -> int:
        """Model turns taken."""
        return len(self.model_segments())

    def turn_room(self) -> int:
        """How many tokens the next model turn may sample: ``max_turn_tokens``, or less where the
        total limit leaves less; 0 when the episode is over."""
        if self.done:
            return 0
        limit, _ = self.budget.total_limit()
        room = self.budget.max_turn_tokens
        return room if limit is None else max(0, min(room, limit - len(self)))

    # -- per token ----------------------------------------------------------------------
    def token_ids(self) -> list[int]:
        """The whole sequence: prompt, then every segment's ids in order."""
        out = list(self.prompt_ids)
        for s in self.segments:
            out += s.ids
        return out

    def sources(self) -> list[int]:
        """``Source`` of each token."""
        out = [Source.PROMPT] * len(self.prompt_ids)
        for s in self.segments:
            out += [Source.MODEL if isinstance(s, ModelSegment) else Source.ENV] * len(s.ids)
        return out

    def loss_mask(self) -> list[int]:
        """1 on model tokens, 0 on prompt and environment tokens."""
        return [int(s == Source.MODEL) for s in self.sources()]

    def engine_logprobs(self) -> list[float]:
        """The engine's log-prob of each model token; 0.0 on prompt and environment tokens."""
        out = [0.0] * len(self.prompt_ids)
        for s in self.segments:
            out += list(s.logprobs) if isinstance(s, ModelSegment) else [0.0] * len(s.ids)
        return out

    def versions(self) -> list[int]:
        """The policy version that sampled each model token; -1 on prompt and environment tokens."""
        out = [-1] * len(self.prompt_ids)
        for s in self.segments:
            if isinstance(s, ModelSegment) and isinstance(s.version, tuple):
                out += s.version
            else:
                out += [s.version if isinstance(s, ModelSegment) else -1] * len(s.ids)
        return out

    def turns_per_token(self) -> list[int]:
        """The turn of each model or environment token (an observation has its model turn's index); -1 on the prompt."""
        out = [-1] * len(self.prompt_ids)
        for s in self.segments:
            out += [s.turn] * len(s.ids)
        return out

    def model_tokens(self) -> int:
        return sum(len(s.ids) for s in self.model_segments())

    def info_count(self, key: str) -> int:
        """The sum of ``key`` over the environment's ``info`` of every step (``tool_call``, ``tool_error``)."""
        return sum(int(info.get(key, 0)) for info in self.infos)

    def env_reward(self) -> float | None:
        """The episode's return from its environment: the sum of ``info["reward"]`` over the steps that
        reported one (an OpenEnv environment's per-step rewards); None when no step did."""
        rewards = [info["reward"] for info in self.infos if info.get("reward") is not None]
        return float(sum(rewards)) if rewards else None

    def text(self) -> str:
        """Everything after the prompt as text: each model turn's and observation's own text, joined
        (what the rubric scores; for one turn, the completion's text)."""
        return "".join(s.text for s in self.segments)

    # -- checkpoints ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        segs = [{"source": "model", "ids": list(s.ids), "logprobs": list(s.logprobs), "turn": s.turn,
                 "version": s.version, "finish": s.finish, "text": s.text} if isinstance(s, ModelSegment)
                else {"source": "env", "ids": list(s.ids), "turn": s.turn, "cut": s.cut, "text": s.text}
                for s in self.segments]
        return {"prompt_ids": list(self.prompt_ids), "budget": dataclasses.asdict(self.budget), "segments": segs,
                "finish_reason": self.finish_reason, "error": self.error, "infos": list(self.infos)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trajectory:
        segs: list[Segment] = []
        for s in d["segments"]:
            if s["source"] == "model":
                version = tuple(s["version"]) if isinstance(s["version"], list) else s["version"]
                segs.append(ModelSegment(tuple(s["ids"]), tuple(s["logprobs"]), s["turn"], version, s["finish"],
                                         s.get("text", "")))
            elif s["source"] == "env":
                segs.append(EnvSegment(tuple(s["ids"]), s["turn"], s["cut"], s.get("text", "")))
            else:
                raise ValueError(f"Trajectory.from_json: unknown segment source {s['source']!r}")
        return cls(tuple(d["prompt_ids"]), Budget(**d["budget"]), tuple(segs), d["finish_reason"], d["error"],
                   tuple(d["infos"]))


def _running(traj: Trajectory, doing: str) -> None:
    if traj.done:
        raise ValueError(f"{doing}: the episode is over ({traj.finish_reason})")


def append_turn(traj: Trajectory, sampled_ids: list[int], logprobs: list[float], version: int | Sequence[int],
                finish: str = "stop", text: str = "") -> Trajectory:
    """``traj`` with one model turn appended: ``sampled_ids`` as sampled, with the engine's ``logprobs``.

    ``finish``: the engine's reason the turn ended ("stop" or "length"). Ids past ``turn_room()``
    (an engine asked for more than the room) are cut and the turn counts as "length". A turn cut
    by the total limit (it hit the room, and the room was less than ``max_turn_tokens``) ends the
    episode with ``max_tokens`` (or ``context``); otherwise the environment steps on it next."""
    _running(traj, "append_turn")
    if finish not in ("stop", "length"):
        raise ValueError(f"append_turn: finish must be 'stop' or 'length', got {finish!r}")
    if len(sampled_ids) != len(logprobs):
        raise ValueError(f"append_turn: {len(sampled_ids)} ids but {len(logprobs)} log-probs")
    if not isinstance(version, int):  # one version per token (a turn that spans an in-flight weight load)
        version = tuple(int(v) for v in version)
        if len(version) != len(sampled_ids):
            raise ValueError(f"append_turn: {len(sampled_ids)} ids but {len(version)} versions")
        if len(set(version)) == 1:
            version = version[0]
    room = traj.turn_room()
    if room == 0:
        raise ValueError("append_turn: no room left for a model turn")
    if len(sampled_ids) > room:
        sampled_ids, logprobs, finish = sampled_ids[:room], logprobs[:room], "length"
        if isinstance(version, tuple):
            version = version[:room]
    seg = ModelSegment(tuple(sampled_ids), tuple(float(x) for x in logprobs), traj.turns, version, finish, text)
    out = dataclasses.replace(traj, segments=traj.segments + (seg,))
    if finish == "length" and len(seg.ids) == room and room < traj.budget.max_turn_tokens:
        return dataclasses.replace(out, finish_reason=traj.budget.total_limit()[1])
    return out


def append_observation(traj: Trajectory, obs_ids: list[int], text: str = "") -> Trajectory:
    """``traj`` with an observation appended as ids (its head, cut to ``max_observation_tokens``).

    An observation that leaves no room for one more model token is not appended: the episode ends
    with ``max_tokens`` (or ``context``)."""
    _running(traj, "append_observation")
    if not traj.segments or not isinstance(traj.segments[-1], ModelSegment):
        raise ValueError("append_observation: an observation follows a model turn")
    ids, cut = tuple(obs_ids), 0
    cap = traj.budget.max_observation_tokens
    if cap is not None and len(ids) > cap:
        ids, cut = ids[:cap], len(ids) - cap
    limit, reason = traj.budget.total_limit()
    if limit is not None and len(traj) + len(ids) >= limit:
        return dataclasses.replace(traj, finish_reason=reason)
    return dataclasses.replace(traj, segments=traj.segments + (EnvSegment(ids, traj.turns - 1, cut, text),))


def record_step(traj: Trajectory, obs_ids: list[int] | None, done: bool,
                info: dict[str, Any] | None = None, obs_text: str = "") -> Trajectory:
    """``traj`` after the environment stepped on its last model turn and answered ``(obs, done, info)``.

    ``done``: the episode ends with the last turn's own finish ("stop" or "length"). Otherwise, after
    ``max_turns`` model turns it ends with ``max_turns`` (the observation is not appended: no turn
    would read it); else the observation is appended (``append_observation``)."""
    _running(traj, "record_step")
    if not traj.segments or not isinstance(traj.segments[-1], ModelSegment):
        raise ValueError("record_step: the environment steps on a model turn")
    traj = dataclasses.replace(traj, infos=traj.infos + (dict(info or {}),))
    if done:
        return dataclasses.replace(traj, finish_reason=traj.segments[-1].finish)
    if traj.turns >= traj.budget.max_turns:
        return dataclasses.replace(traj, finish_reason="max_turns")
    if obs_ids is None:
        raise ValueError("record_step: an environment that does not end the episode must return an observation")
    return append_observation(traj, obs_ids, obs_text)


def fail(traj: Trajectory, error: str) -> Trajectory:
    """``traj`` ended by an environment error (``env_error``), with the error kept."""
    _running(traj, "fail")
    return dataclasses.replace(traj, finish_reason="env_error", error=error)


def one_turn(prompt_ids: list[int], token_ids: list[int], logprobs: list[float], finish: str,
             version: int = 0, max_tokens: int | None = None, text: str = "") -> Trajectory:
    """The one-turn episode of a completion (``rollouts.Completion`` fields): the prompt, one model turn
    ended by the environment, finish reason the completion's own. ``max_tokens``: the sampling limit
    (default: the completion's length)."""
    budget = Budget(max_turns=1, max_turn_tokens=max(1, max_tokens or len(token_ids)))
    traj = append_turn(Trajectory.start(prompt_ids, budget), token_ids, logprobs, version, finish, text)
    return record_step(traj, None, True)

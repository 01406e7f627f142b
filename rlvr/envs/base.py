"""What every environment kind shares: the ``Env`` protocol, the config fields, the registry.

An environment kind is one file: a config class (``kind: Literal[...]`` plus its own fields, on
``EnvBase``) and a builder ``build(cfg, encode) -> Env``, registered with ``@register_env``. The
``env:`` config union (``rlvr.envs.env_config_union``) is built from this registry, so adding a
kind touches nothing else.

An ``Env`` object runs one episode at a time: ``reset(row)`` starts one and returns the first
observation (the prompt the model answers), ``step(ids, text)`` takes the model's turn, both as the
sampled ids and as their text, and answers ``(observation, done, info)``. Observations carry ids:
an environment that speaks text encodes it once with ``encode`` (given at build time), and those
ids are appended to the episode as they are (``rlvr.envs.trajectory``). ``info`` is JSON-serialisable;
an environment with rewards of its own puts each step's under ``info["reward"]`` (the ``env_reward``
verifier scores their sum). An environment holding something outside the process (a server session) may
have ``close()``, which the runner calls when the draw is over. A ``reset`` that raises (anything but a
``DataError``, which stops the draw) fails that episode, as a ``step`` that raises does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from rlvr.envs.trajectory import Budget, Trajectory
from rlvr.errors import DataError

# text -> token ids, no special tokens added (for an HF tokenizer: ``hf_encoder(tokenizer)``)
Encode = Callable[[str], list[int]]


class HFEncoder:
    """``Encode`` of a transformers tokenizer, adding no special tokens (as the prompts are encoded). It
    keeps the ``tokenizer``: an environment that speaks the chat template's tool-call turns (the python
    tool's ``call_format: hermes``) reads the template from it."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def hf_encoder(tokenizer: Any) -> Encode:
    """``Encode`` of a transformers tokenizer (``HFEncoder``)."""
    return HFEncoder(tokenizer)


@dataclass(frozen=True)
class Observation:
    """What the environment shows the model: ``ids`` are appended to the episode as they are; ``text``
    is for people and logs (never re-encoded)."""

    ids: list[int]
    text: str = ""


@runtime_checkable
class Env(Protocol):
    def reset(self, row: Mapping[str, Any]) -> Observation:
        """Start an episode on ``row``; the first observation: the prompt the model answers first."""
        ...

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        """The model's turn (sampled ids and their text) -> (next observation or None when done, done, info)."""
        ...


class EnvBase(BaseModel):
    """Fields every environment kind has: how long an episode may run."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    max_turns: int = Field(1, ge=1, description="Most model turns in one episode; an episode the environment has "
                           "not ended by then finishes with 'max_turns'.")
    max_turn_tokens: int | None = Field(None, ge=1, description="Most tokens one model turn samples. None: "
                                        "sampling.max_tokens.")
    max_total_tokens: int | None = Field(None, ge=1, description="Most tokens of a whole episode (prompt, model "
                                         "turns and observations); an episode that reaches it finishes with "
                                         "'max_tokens'. None: only the model's context length limits it.")
    max_observation_tokens: int | None = Field(None, ge=1, description="An observation longer than this is cut to "
                                               "its first this-many tokens. None: not cut.")

    # The verifiers whose tasks this kind can run (a task's default verifier must be one); empty: any task.
    # Checked with the run's config (rlvr.config), so a pair that cannot work stops before anything loads.
    task_verifiers: ClassVar[tuple[str, ...]] = ()

    def prepare_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row as this environment runs it, called on every row when the task loads (before any model
        loads): a ValueError says what the row lacks (the loader names the environment, split and row);
        anything the environment derives from the row is added. Must be idempotent. Default: the row as is."""
        return dict(row)

    def graded_text(self, traj: Trajectory) -> str:
        """What the run's rubric grades of a finished episode: everything after the prompt (the model's turns
        and the observations, as the one-turn case grades its completion). A kind whose episode holds several
        attempts at one answer grades the last (code_repair)."""
        return traj.text()

    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a model turn besides EOS (a tool call's closing tag), added to every turn's
        sampling; none by default."""
        return ()

    def tools(self) -> list[dict] | None:
        """JSON schemas of the tools the prompt offers through the chat template's ``tools=`` (rlvr.tasks.render
        with task.format=chat), for an environment whose model calls them in the template's own format;
        None (the default): the prompt lists no tools."""
        return None

    def budget(self, max_tokens: int, context: int | None = None) -> Budget:
        """The episode limits of this config, with ``max_tokens`` (sampling.max_tokens) for an unset
        ``max_turn_tokens`` and ``context`` the model's context length."""
        return Budget(self.max_turns, self.max_turn_tokens or max_tokens, self.max_total_tokens,
                      self.max_observation_tokens, context)


@dataclass(frozen=True)
class EnvKind:
    """A registry entry: the config class and the builder of one environment."""

    name: str
    config: type[EnvBase]
    build: Callable[[Any, Encode], Env]


ENVS: dict[str, EnvKind] = {}


def register_env(name: str, config: type[EnvBase]) -> Callable:
    """``@register_env("guess_number", GuessNumberConfig)`` above ``def build(cfg, encode) -> Env``."""

    def deco(build: Callable[[Any, Encode], Env]) -> Callable[[Any, Encode], Env]:
        if name in ENVS:
            raise ValueError(f"environment kind {name!r} is already registered")
        ENVS[name] = EnvKind(name, config, build)
        return build

    return deco


def prompt_observation(row: Mapping[str, Any], env: str) -> Observation:
    """The row's rendered prompt (``prompt_ids``, added by rlvr.tasks.prepare_rows) as the first observation."""
    if "prompt_ids" not in row:
        raise DataError(f"environment {env!r}: the row has no 'prompt_ids' (rlvr.tasks.prepare_rows adds them); "
                        f"row keys: {sorted(row)}")
    return Observation(list(row["prompt_ids"]), row.get("prompt_text", ""))

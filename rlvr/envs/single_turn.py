"""``single_turn``: today's one-turn case as an environment. ``reset`` gives the row's prompt; the first
model turn ends the episode, whose finish reason is then that turn's own ("stop" or "length")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import model_validator

from rlvr.envs.base import Encode, EnvBase, Observation, prompt_observation, register_env


class SingleTurnConfig(EnvBase):
    """One model turn per episode: the completion of a prompt."""

    kind: Literal["single_turn"] = "single_turn"

    @model_validator(mode="after")
    def _one_turn(self) -> SingleTurnConfig:
        if self.max_turns != 1:
            raise ValueError(f"env.max_turns: single_turn takes exactly one turn, got {self.max_turns}")
        return self


class SingleTurn:
    def reset(self, row: Mapping[str, Any]) -> Observation:
        return prompt_observation(row, "single_turn")

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        return None, True, {}


@register_env("single_turn", SingleTurnConfig)
def build(cfg: SingleTurnConfig, encode: Encode) -> SingleTurn:
    return SingleTurn()

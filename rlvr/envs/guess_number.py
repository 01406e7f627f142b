"""``guess_number``: a stateful feedback game for multi-turn tests and credit assignment.

The row holds ``secret`` (an int) and the rendered prompt (which should say the range). Each model
turn is read for its last integer; the observation says "higher", "lower" or "correct" (in
``observation_template``), and "correct" ends the episode. A turn without a number gets a
reminder and counts as a guess (``info["malformed"]``). The episode's turn limit is the budget's
``max_turns`` (rlvr.envs.trajectory.record_step), as for every environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from rlvr.envs.base import Encode, EnvBase, Observation, prompt_observation, register_env
from rlvr.errors import DataError

NUMBER = re.compile(r"-?\d+")


class GuessNumberConfig(EnvBase):
    """Guess the row's ``secret`` from higher/lower replies."""

    kind: Literal["guess_number"] = "guess_number"
    max_turns: int = Field(6, ge=1, description="Most guesses in one episode.")
    observation_template: str = Field("\n{feedback}\n", description="How a reply is shown to the model: "
                                      "{feedback} is 'higher', 'lower', 'correct' or the no-number reminder.")
    no_number: str = Field("no number found, guess again", description="The reply to a turn without an integer.")

    @model_validator(mode="after")
    def _template(self) -> GuessNumberConfig:
        if "{feedback}" not in self.observation_template:
            raise ValueError("env.observation_template must contain '{feedback}'")
        return self


    def prepare_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        secret = row.get("secret")
        if not isinstance(secret, int) or isinstance(secret, bool):
            raise ValueError(f"it needs an integer 'secret' (the number to guess), got {secret!r}")
        return dict(row)


class GuessNumber:
    def __init__(self, cfg: GuessNumberConfig, encode: Encode):
        self.cfg, self.encode = cfg, encode
        self.secret: int | None = None
        self.guesses = 0

    def reset(self, row: Mapping[str, Any]) -> Observation:
        if not isinstance(row.get("secret"), int) or isinstance(row.get("secret"), bool):
            raise DataError(f"environment 'guess_number': the row needs an integer 'secret', got "
                            f"{row.get('secret')!r}; row keys: {sorted(row)}")
        self.secret, self.guesses = row["secret"], 0
        return prompt_observation(row, "guess_number")

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        if self.secret is None:
            raise RuntimeError("guess_number: step before reset")
        self.guesses += 1
        numbers = NUMBER.findall(model_turn_text)
        if not numbers:
            return self._say(self.cfg.no_number), False, {"guesses": self.guesses, "malformed": True}
        guess = int(numbers[-1])
        info = {"guesses": self.guesses, "malformed": False, "guess": guess}
        if guess == self.secret:
            return None, True, {**info, "solved": True}
        return self._say("higher" if guess < self.secret else "lower"), False, info

    def _say(self, feedback: str) -> Observation:
        text = self.cfg.observation_template.format(feedback=feedback)
        return Observation(self.encode(text), text)


@register_env("guess_number", GuessNumberConfig)
def build(cfg: GuessNumberConfig, encode: Encode) -> GuessNumber:
    return GuessNumber(cfg, encode)

"""A small OpenEnv environment written with openenv-core's server API, for the ``openenv`` environment's
tests: higher/lower guessing of a secret the reset sets (``secret``, default 7), reward 1.0 and done on
the right guess. ``app`` serves it (``create_app``, concurrent sessions allowed), in a test's thread or
as ``env.app: openenv_game:app`` (tests/ is on the child's path).

Faults, by guess: 13 makes ``step`` raise on the server (every time); 11 raises the first time any
session sends it in this process (``FLAKY``), then plays as a normal guess."""

from __future__ import annotations

import threading
from typing import Any

from openenv.core.env_server import Action, Environment, Observation, State, create_app


class GuessAction(Action):
    guess: int


class GuessObservation(Observation):
    message: str = ""


FLAKY = {"armed": True}
_flaky_lock = threading.Lock()


class GuessGame(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        super().__init__()
        self._state = State(step_count=0)
        self.secret = 7

    def reset(self, seed: int | None = None, episode_id: str | None = None, secret: int = 7,
              **kwargs: Any) -> GuessObservation:
        self.secret, self._state = int(secret), State(episode_id=episode_id, step_count=0)
        return GuessObservation(message="Guess a number from 1 to 16.", reward=None, done=False)

    def step(self, action: GuessAction, timeout_s: float | None = None, **kwargs: Any) -> GuessObservation:
        if action.guess == 13:
            raise RuntimeError("unlucky guess: the game crashed")
        if action.guess == 11:
            with _flaky_lock:
                armed, FLAKY["armed"] = FLAKY["armed"], False
            if armed:
                raise RuntimeError("a transient failure")
        self._state.step_count += 1
        if action.guess == self.secret:
            return GuessObservation(message="correct", reward=1.0, done=True)
        return GuessObservation(message="higher" if action.guess < self.secret else "lower", reward=0.0, done=False)

    @property
    def state(self) -> State:
        return self._state


app = create_app(GuessGame, GuessAction, GuessObservation, env_name="guess_game", max_concurrent_envs=64)

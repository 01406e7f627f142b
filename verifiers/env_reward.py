"""The environment's own reward as a rubric part (`env_reward`): what an environment such as an OpenEnv
one reported for the episode, composed with the other verifiers by weight like any of them.

A verifier sees text and a row, never the episode, so the scorer (``rlvr.scoring``) puts the episode's
return (the sum of the rewards its environment reported per step, ``info["reward"]``) in the episode's
copy of the row under ``KEY``. ``rewards: [{verifier: env_reward}]`` trains on the environment's reward
alone; add ``r1_format`` (or a task verifier) with a weight to mix them.

* ``None``: the environment reported no reward on any step of this episode (it was cut by a budget
  before one came, or it is a kind that never reports rewards, which the zero-reward alarm then names):
  reward 0, outcome ``wrong``.
* ``KEY`` missing: the text was scored outside an episode (a bare completion): ``verifier_error`` with
  that said, never a silent 0.
* ``correct``: the return is above ``correct_above`` (default 0), so pass@k counts rewarded episodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from verifiers.base import Score

KEY = "env_reward"


class EnvRewardVerifier:
    name = "env_reward"

    def __init__(self, correct_above: float = 0.0):
        self.correct_above = float(correct_above)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        if KEY not in task:
            return Score(0.0, None, {}, f"no {KEY!r} in the row (keys: {sorted(task)}): env_reward scores "
                         f"episodes, whose environment's rewards rlvr.scoring puts there", outcome="verifier_error")
        value = task[KEY]
        if value is None:
            return Score(0.0, False, {"env_rewarded": 0.0})
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return Score(0.0, None, {}, f"environment reward is not a finite number: {value!r}",
                         outcome="verifier_error")
        return Score(float(value), value > self.correct_above, {"env_rewarded": 1.0})

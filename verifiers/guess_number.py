"""Number-guessing checker (`guess_number`): the episode's last integer is the row's ``secret``.

``verifiers.get("guess_number").score(text, {"secret": 7})``. Meant for the ``guess_number``
environment, whose episodes end right after a correct guess: the text of an episode (model
turns and the environment's higher/lower replies, which hold no digits) ends with the final guess.
Reward 1.0 when it is the secret, else 0.0; ``metrics["guessed"]`` says whether any integer was found.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from verifiers.base import Score

_INT = re.compile(r"-?\d+")
MAX_DIGITS = 30  # an answer longer than this cannot be a guess of a small secret


class GuessNumberVerifier:
    name = "guess_number"
    requires = ("secret",)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        found = _INT.findall(completion)
        if not found or len(found[-1].lstrip("-")) > MAX_DIGITS:
            return Score(0.0, False, {"guessed": 0.0})
        right = int(found[-1]) == int(task["secret"])
        return Score(float(right), right, {"guessed": 1.0})

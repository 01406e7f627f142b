"""``guess_number``: find a secret integer from higher/lower replies (the ``guess_number`` environment).

Every row asks the same question, "guess the number from ``low`` to ``high``"; only the row's
``secret`` differs, and the prompt does not show it. One turn can only guess; the environment's
replies make several turns informative, so the task measures multi-turn credit assignment: a
policy that halves the range each turn solves every row within ceil(log2(high - low + 1)) turns.
Train and test secrets are drawn with different seeds (the prompts are the same text, so there is
no hash split). Use it with ``env: {kind: guess_number}``; the default verifier is
``guess_number`` (the episode's last integer is the secret).
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from rlvr.tasks.base import Row, Splits, TaskBase, register_task

QUESTION = "I picked a whole number from {low} to {high}. Guess it; after each guess I say higher or lower."


class GuessNumberTask(TaskBase):
    kind: Literal["guess_number"] = "guess_number"
    low: int = Field(1, description="Smallest secret.")
    high: int = Field(16, description="Largest secret.")
    train_size: int | None = Field(2000, ge=1, description="Training rows generated (secrets drawn uniformly).")

    @model_validator(mode="after")
    def _check_range(self) -> GuessNumberTask:
        if self.low > self.high:
            raise ValueError(f"task.low={self.low} must be <= task.high={self.high}")
        return self


def guess_rows(cfg: GuessNumberTask, count: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    question = QUESTION.format(low=cfg.low, high=cfg.high)
    return [{"question": question, "secret": (s := rng.randint(cfg.low, cfg.high)), "answer": str(s)}
            for _ in range(count)]


@register_task("guess_number", GuessNumberTask, verifier="guess_number")
def load(cfg: GuessNumberTask) -> Splits:
    train = guess_rows(cfg, cfg.train_size or 2000, cfg.seed)
    test = guess_rows(cfg, cfg.test_size, cfg.seed + 1)
    return Splits(train, test, [f"task guess_number: {len(train)} training and {len(test)} held-out secrets from "
                                f"{cfg.low} to {cfg.high}, generated"])

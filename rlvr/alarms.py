"""Reward alarms: a run whose rewards are silently broken stops itself, saying why.

Other engines have trained for days on identically-zero math rewards (a reference format the
verifier never matches, a crashed sandbox). Here a run stops when every reward was exactly 0 for
``alarms.zero_reward_steps`` steps in a row, or when more than ``alarms.max_error_rate`` of a
step's samples ended, after retries, with one outcome that was not the policy's doing
(``verifier_error``, ``infra_error``), or more than ``alarms.max_outcome_rates[o]`` with outcome
``o``; the message names the verifier and shows a sample.
A gradient of exactly 0 for ``alarms.zero_grad_steps`` steps only warns (all-equal groups
happen in healthy runs too).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rlvr.config import AlarmsConfig
from verifiers import FAILURE_OUTCOMES


class RewardAlarm(RuntimeError):
    """The run's rewards cannot be trusted; the message says which verifier and shows a sample."""


def _sample(scored: Sequence[Any], pick) -> str:
    for sg in scored:
        for comp, score in zip(sg.group.completions, sg.scores):
            if pick(score):
                ref = {k: v for k, v in sg.row.items() if k not in ("prompt_text", "prompt_ids", "question")}
                return (f"\n  question:   {str(sg.row.get('question'))[:200]!r}\n  completion: {comp.text[:300]!r}"
                        f"\n  task keys:  {str(ref)[:300]}\n  score:      reward={score.reward} error={score.error} "
                        f"outcome={score.outcome}")
    return ""


_WHY = {"verifier_error": "checks failed in the verifier", "infra_error": "checks failed in the machinery under "
        "the verifier", "policy_timeout": "programs ran out of time or memory", "unparsed": "no answer could be read",
        "truncated": "completions cut at the token limit", "wrong": "wrong answers", "correct": "right answers"}


class Alarms:
    def __init__(self, cfg: AlarmsConfig, verifier_names: Sequence[str]):
        self.cfg, self.names = cfg, list(verifier_names)
        self.zero_reward_run = 0
        self.zero_grad_run = 0

    def _limits(self) -> list[tuple[str, float, str]]:
        """(outcome, the share of a step's samples it may reach, the config key that says so)."""
        out = {o: (self.cfg.max_error_rate, "max_error_rate") for o in FAILURE_OUTCOMES}
        out.update({o: (rate, f"max_outcome_rates.{o}") for o, rate in self.cfg.max_outcome_rates.items()})
        return [(o, rate, key) for o, (rate, key) in out.items()]

    def check(self, step: int, scored: Sequence[Any], metrics: dict[str, float]) -> None:
        scores = [s for sg in scored for s in sg.scores]
        for outcome, limit, key in self._limits():
            hits = sum(s.outcome == outcome for s in scores)
            if scores and hits / len(scores) > limit:
                raise RewardAlarm(
                    f"step {step}: {hits} of {len(scores)} samples ended {outcome} ({_WHY[outcome]}; "
                    f"> alarms.{key}={limit}); rubric {self.names}. First one:"
                    + _sample(scored, lambda s, o=outcome: s.outcome == o))
        self.zero_reward_run = self.zero_reward_run + 1 if all(s.reward == 0 for s in scores) else 0
        if self.cfg.zero_reward_steps and self.zero_reward_run >= self.cfg.zero_reward_steps:
            raise RewardAlarm(
                f"step {step}: every reward was 0 for {self.zero_reward_run} steps in a row "
                f"(alarms.zero_reward_steps={self.cfg.zero_reward_steps}); rubric {self.names} never rewarded "
                "anything: check that the reference and the completions are in a form the verifier reads. Sample:"
                + _sample(scored, lambda s: True))
        self.zero_grad_run = self.zero_grad_run + 1 if metrics.get("grad_norm", 1.0) == 0 else 0
        if self.cfg.zero_grad_steps and self.zero_grad_run == self.cfg.zero_grad_steps:
            print(f"warning: step {step}: the gradient was exactly 0 for {self.zero_grad_run} steps in a row "
                  "(every group's rewards were equal: nothing to learn from); consider more samples per prompt "
                  "(sampling.n), a higher temperature, or easier prompts", file=sys.stderr)

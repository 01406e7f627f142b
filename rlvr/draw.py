"""What each step draws: which training prompts (``PromptSampler``), how many rounds (DAPO's dynamic
sampling, ``sample_groups``), with which seeds (``StepDrawer``), and the rollout metrics of a step.

Every row and seed is chosen here, on the driver, so the rollouts do not depend on where they are
drawn (this process, or Ray workers) or on how many workers draw them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlvr.agents import agent_metrics
from rlvr.algorithms import dynamic_sampling_filter
from rlvr.config import TrainConfig
from rlvr.envs.trajectory import FINISH_REASONS, TRUNCATED, Trajectory
from rlvr.errors import DataError
from rlvr.evaluate import FORMAT
from rlvr.pipeline import ScoredGroup, StepRollouts
from rlvr.train.batch import episodes_of
from rollouts import SamplingConfig
from verifiers import Score
from verifiers.batch import outcome_counts


class PromptSampler:
    """Shuffled epochs over the training rows; its position is plain state (for resume)."""

    def __init__(self, n_rows: int, seed: int):
        if n_rows < 1:
            raise ValueError("the training split is empty: nothing to sample prompts from")
        self.n_rows, self.seed, self.epoch, self.pos = n_rows, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n_rows))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n_rows:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            take = min(k - len(out), self.n_rows - self.pos)
            out += self._order[self.pos : self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n_rows": self.n_rows, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["n_rows"], state["seed"]) != (self.n_rows, self.seed):
            raise DataError(f"resume: the checkpoint's prompt sampler saw {state['n_rows']} rows with seed "
                             f"{state['seed']}, this run has {self.n_rows} rows with seed {self.seed}")
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def sample_groups(draw: Callable[[int, int], list[ScoredGroup]], want: int, dynamic: bool,
                  max_rounds: int) -> tuple[list[ScoredGroup], list[ScoredGroup], dict[str, float]]:
    """The step's groups: ``(batch, drawn, stats)``; ``draw(round, k)`` generates and scores ``k`` prompts.

    Without ``dynamic`` sampling this is one round of ``want`` prompts, used as is. With it
    (DAPO), groups whose valid samples' rewards are all equal (no signal for a group-relative
    advantage; a group with fewer than two valid samples has none either) are dropped, and
    further rounds draw the missing number of prompts, scaled up by the share of informative
    groups seen so far, until ``want`` are kept or ``max_rounds`` rounds ran; the
    excess is trimmed. If the rounds run out, dropped groups top the batch up to ``want`` (they
    carry no group-relative advantage), so a step never trains on an empty batch.
    """
    if not dynamic:
        drawn = draw(0, want)
        return drawn, drawn, {}
    kept, dropped, drawn, rounds = [], [], [], 0
    while len(kept) < want and rounds < max_rounds:
        informative_frac = len(kept) / len(drawn) if drawn else 1.0
        k = want if not drawn else min(want, math.ceil((want - len(kept)) / max(informative_frac, 1 / want)))
        new = draw(rounds, k)
        rounds += 1
        valid = [sg.valid for sg in new]  # the samples whose check did not fail: the others carry no signal
        rewards = torch.cat([sg.rewards[v] for sg, v in zip(new, valid)])  # [B valid]
        sizes = torch.tensor([int(v.sum()) for v in valid])
        keep = dynamic_sampling_filter(rewards, torch.repeat_interleave(torch.arange(len(new)), sizes))
        first = torch.cumsum(sizes, 0) - sizes  # index of each group's first valid member
        for sg, n_valid, start in zip(new, sizes.tolist(), first.tolist()):
            (kept if n_valid and bool(keep[start]) else dropped).append(sg)
        drawn += new
    padded = max(0, want - len(kept))
    stats = {"sampling_rounds": float(rounds), "groups_drawn": float(len(drawn)), "groups_dropped": float(len(dropped)),
             "groups_padded": float(padded), "informative_frac": len(kept) / len(drawn)}
    return kept[:want] + dropped[:padded], drawn, stats


TIMINGS = ("generate_s", "score_s", "score_wait_s", "score_hidden_s")  # a draw's seconds, summed over its rounds


class StepDrawer:
    """Draws a step's rollouts (every dynamic-sampling round) from ``rollouts``, generated and scored
    as groups finish: the job the rollout pipeline runs for each step. Round ``r`` of step ``s`` samples
    with seed ``train.seed * 100_003 + s + r * 1_000_003``; the prompts come from ``sampler``."""

    REDRAW_ROUND = 1000  # the round number of a redraw's seeds (train.async.stale: redraw), past any DAPO round

    def __init__(self, cfg: TrainConfig, rows: list[dict[str, Any]], sampler: PromptSampler, rollouts: Any):
        self.cfg, self.rows, self.sampler, self.rollouts = cfg, rows, sampler, rollouts

    def __call__(self, step: int) -> StepRollouts:
        timings = dict.fromkeys(TIMINGS, 0.0)

        def draw(rnd: int, k: int) -> list[ScoredGroup]:
            return self._draw([self.rows[i] for i in self.sampler.next(k)], step, rnd, timings)

        algo = self.cfg.algorithm
        batch, drawn, stats = sample_groups(draw, self.cfg.train.prompts_per_step, algo.dynamic_sampling,
                                            algo.max_sampling_rounds)
        return StepRollouts(step, batch, drawn, stats, timings)

    def redraw(self, step: int, rows: list[dict[str, Any]]) -> list[ScoredGroup]:
        """``rows``' groups drawn again for ``step`` on the engine's weights as they are now (their first draw
        was too old to train on), with round ``REDRAW_ROUND``'s seed; the prompt sampler does not move."""
        return self._draw(rows, step, self.REDRAW_ROUND, dict.fromkeys(TIMINGS, 0.0))

    def _draw(self, rows: list[dict[str, Any]], step: int, rnd: int, timings: dict[str, float]) -> list[ScoredGroup]:
        """Generate and score ``rows``' groups as round ``rnd`` of ``step``, adding the time to ``timings``."""
        cfg = self.cfg
        sampling = SamplingConfig(n=cfg.sampling.n, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  max_tokens=cfg.sampling.max_tokens,
                                  seed=cfg.train.seed * 100_003 + step + rnd * 1_000_003)
        groups, scores, t = self.rollouts.generate_and_score(rows, sampling)
        for key in timings:
            timings[key] += t[key]
        return [ScoredGroup(row, g, sc) for row, g, sc in zip(rows, groups, scores)]


def rollout_metrics(scored: list[ScoredGroup], multi_turn: bool = False, terms: Sequence[str] = ()) -> dict[str, float]:
    """Rollout statistics of every group drawn; the format rate is the rubric's own ``r1_format`` score
    (absent when the rubric does not check the format). ``multi_turn`` (``env.max_turns > 1``): also the
    episodes' turns, the share of each finish reason and the environments' errors. A response is
    everything after the prompt (observations included); ``truncated_frac`` counts every episode a
    budget cut (``length``, ``max_tokens``, ``context``). The outcome counts: `outcome_metrics`.
    ``terms``: the rubric's verifier names; ``reward/<name>`` is each one's mean reward (unweighted) over
    the samples that scored cleanly."""
    comps = [c for sg in scored for c in sg.group.completions]
    scores = [s for sg in scored for s in sg.scores]
    rewards = torch.cat([sg.rewards for sg in scored])
    lengths = [len(c.token_ids) for c in comps]
    per_group = rewards.view(len(scored), -1)
    fmt = [s.metrics[FORMAT] for s in scores] if all(FORMAT in s.metrics for s in scores) else None
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": sum(bool(s.correct) for s in scores) / len(scores),
        **({"format_rate": sum(fmt) / len(comps)} if fmt is not None else {}),
        "response_len_mean": sum(lengths) / len(lengths),
        "response_len_max": float(max(lengths)),
        "truncated_frac": sum(c.finish_reason in TRUNCATED for c in comps) / len(comps),
        "solved_none_frac": float((per_group.max(1).values == per_group.min(1).values).float().mean()),
        "verifier_errors": float(sum(s.error is not None for s in scores)),
        "verifier_error_rate": sum(s.error is not None for s in scores) / len(scores),
        **outcome_metrics(scored),
        **term_metrics(scores, terms),
        **(episode_metrics([t for sg in scored for t in episodes_of(sg)]) if multi_turn else {}),
        **agent_metrics([sg.group for sg in scored]),
    }


def term_metrics(scores: Sequence[Score], terms: Sequence[str]) -> dict[str, float]:
    """``reward/<name>``: the mean reward each rubric part gave, over the clean samples that carry it."""
    out = {}
    for name in terms:
        values = [s.metrics[name] for s in scores if s.trainable and name in s.metrics]
        if values:
            out[f"reward/{name}"] = sum(values) / len(values)
    return out


def episode_metrics(episodes: list[Trajectory]) -> dict[str, float]:
    """Turns, model tokens, tool calls and tool errors per episode (the environments' ``info``), the
    environments' failures, and the share of episodes ending for each reason."""
    n = len(episodes)
    out = {"turns_mean": sum(t.turns for t in episodes) / n, "turns_max": float(max(t.turns for t in episodes)),
           "model_tokens_mean": sum(t.model_tokens() for t in episodes) / n,
           "tool_calls_mean": sum(t.info_count("tool_call") for t in episodes) / n,
           "tool_errors_mean": sum(t.info_count("tool_error") for t in episodes) / n,
           "env_errors": float(sum(t.finish_reason == "env_error" for t in episodes))}
    for reason in FINISH_REASONS:
        out[f"finish/{reason}"] = sum(t.finish_reason == reason for t in episodes) / n
    return out


def outcome_metrics(scored: list[ScoredGroup]) -> dict[str, float]:
    """What became of the samples drawn: ``outcome/<outcome>`` counts (after retries), ``outcome/retried``
    (samples scored more than once), ``outcome/excluded`` (samples kept out of training: their own check
    failed, or their group was dropped) and ``outcome/groups_dropped`` (groups left with fewer than two
    valid samples)."""
    scores = [s for sg in scored for s in sg.scores]
    valid = [sg.valid for sg in scored]
    return {**outcome_counts(scores),
            "outcome/retried": float(sum(s.metrics.get("retries", 0.0) > 0 for s in scores)),
            "outcome/excluded": float(sum(int((~v).sum()) for v in valid)),
            "outcome/groups_dropped": float(sum(not v.any() for v in valid))}

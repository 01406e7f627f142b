"""Episodes generated and scored, with scoring overlapped: each group is scored the moment its episodes end.

A draw runs every episode of its rows through the run's environment (rlvr.envs.runner; a run without
an ``env:`` section is the one-turn case of the same path) and returns ``EpisodeGroup``s: one per row,
its completions being its episodes as the rubric sees them (everything after the prompt) and its
``episodes`` the token-in/token-out trajectories the learner trains on.

The engine calls back with every finished group (``on_group``); the group goes to a pool of
``rewards.workers`` scoring threads, which feed the verifiers' own worker processes (math) or
sandbox (code), while the remaining groups still generate. Only the scoring left when
generation ends is on the step's critical path (``score_wait_s``); the rest is hidden
(``score_hidden_share``).

Each part of the rubric scores a failed check again (``rewards.retries``: outcomes verifier_error
and infra_error, see verifiers.score_batch). A completion the engine cut at ``max_tokens`` (finish
reason ``length``) that did not earn its answer is labelled ``truncated`` here: the verifier sees
only text and cannot know it was cut; the reward is unchanged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rlvr.envs import EnvBase, Trajectory, hf_encoder
from rlvr.envs.runner import run_episodes
from rlvr.envs.single_turn import SingleTurnConfig
from rlvr.envs.trajectory import TRUNCATED
from rollouts import Completion, Engine, Group, SamplingConfig
from verifiers import Rubric, Score, score_batch
from verifiers.batch import BatchVerifier
from verifiers.env_reward import KEY as ENV_REWARD

ONE_TURN = SingleTurnConfig()


@dataclass
class EpisodeGroup(Group):
    """A row's group: ``completions[j]`` is episode ``j`` as text and ids after the prompt (model turns and
    observations; for one turn, the completion itself), ``episodes[j]`` the episode token by token."""

    episodes: list[Trajectory] = field(default_factory=list)
    # per episode, the exact sequences it trains on when it is not one sequence (an agent session whose
    # history was edited: rlvr.agents.sequences); empty: each episode is its own one sequence
    sequences: list[list[Trajectory]] = field(default_factory=list)


def episode_completion(traj: Trajectory) -> Completion:
    """An episode as one completion: everything after the prompt, the engine's log-probs (0 on observation
    tokens), the episode's finish reason. For a one-turn episode, exactly the engine's completion."""
    start = len(traj.prompt_ids)
    return Completion(traj.text(), traj.token_ids()[start:], traj.engine_logprobs()[start:], traj.finish_reason)


class Scorer:
    """A pool of scoring threads for one rubric; ``generate_and_score`` uses it per draw."""

    def __init__(self, rubric: Rubric, workers: int):
        self.rubric, self.workers = rubric, workers
        # Overlap pays only for verifiers that work outside this process (math's workers, the code
        # sandbox); in-process checks (arith, format) take microseconds, and scoring them on threads
        # beside the engine's Python loop costs more in GIL hand-offs than it hides.
        self.overlaps = any(isinstance(v, BatchVerifier) for v, _ in rubric.parts)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="score")
        self._lock = threading.Lock()
        self._spans: list[tuple[float, float]] = []

    def _score(self, group: Group, row: Mapping[str, Any], graded: Sequence[str] | None = None) -> list[Score]:
        t0 = time.perf_counter()
        try:
            # An episode its environment broke is not scored: it is labelled, never a reward of 0 for the policy.
            episodes = getattr(group, "episodes", None) or [None] * len(group.completions)
            live = [k for k, t in enumerate(episodes) if t is None or t.finish_reason != "env_error"]
            texts = [(group.completions[k].text if graded is None else graded[k]) for k in live]
            rows = [episode_row(row, episodes[k]) for k in live]
            # Verifiers with their own worker processes (math, code) get the group in parallel; cheap
            # in-process ones (arith, format) run inline: groups already run on `workers` threads.
            per_part = [score_batch(v, texts, rows, self.workers if isinstance(v, BatchVerifier) else 1,
                                    self.rubric.retries) for v, _ in self.rubric.parts]
            scored = {k: label_truncated(self.rubric.combine(list(scores)), group.completions[k].finish_reason)
                      for k, scores in zip(live, zip(*per_part))}
            return [scored[k] if k in scored else env_error_score(episodes[k]) for k in range(len(episodes))]
        finally:
            with self._lock:
                self._spans.append((t0, time.perf_counter()))

    def submit(self, group: Group, row: Mapping[str, Any], graded: Sequence[str] | None = None) -> Future:
        """Score ``group``'s completions against ``row``; ``graded``: the text the rubric grades of each
        (the environment's ``graded_text`` of its episodes; None: the completions' text)."""
        if not self.overlaps:  # inline, in the caller's thread
            fut: Future = Future()
            fut.set_result(self._score(group, row, graded))
            return fut
        return self._pool.submit(self._score, group, row, graded)

    def busy_s(self, since: float) -> float:
        """Seconds in which at least one scoring job ran, since ``since`` (overlaps counted once)."""
        with self._lock:
            spans = sorted((max(a, since), b) for a, b in self._spans if b > since)
            self._spans = [s for s in self._spans if s[1] > since]
        total, end = 0.0, since
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def encoder_of(engine: Engine):
    """The engine's tokenizer as an ``Encode`` (what an environment encodes its observations with)."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None:
        return hf_encoder(tokenizer)

    def missing(text: str) -> list[int]:
        raise TypeError(f"{type(engine).__name__} has no tokenizer: an environment cannot encode its observations")

    return missing


def episode_row(row: Mapping[str, Any], traj: Trajectory | None) -> Mapping[str, Any]:
    """The row the rubric scores an episode against: a copy of ``row`` with the episode's return from its
    environment under ``env_reward`` (what the ``env_reward`` verifier reads; None when its environment
    reported no reward), or ``row`` itself for a bare completion."""
    return row if traj is None else {**row, ENV_REWARD: traj.env_reward()}


def env_error_score(traj: Trajectory) -> Score:
    """An episode its environment broke: not the policy's doing (``infra_error``), kept out of training."""
    return Score(0.0, None, {}, f"env_error: {traj.error}", outcome="infra_error")


def label_truncated(score: Score, finish_reason: str | None) -> Score:
    """``score`` with outcome ``truncated`` when the completion (episode) was cut by a token limit and its
    answer was not right (``wrong`` or ``unparsed``); any other outcome says more and is kept."""
    if finish_reason in TRUNCATED and score.outcome in ("wrong", "unparsed"):
        return dataclasses.replace(score, outcome="truncated")
    return score


def generate_and_score(engine: Engine, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig,
                       scorer: Scorer, env: EnvBase | None = None, version: int = 0,
                       context: int | None = None) -> tuple[list[EpisodeGroup], list[list[Score]], dict[str, float]]:
    """Groups of episodes for ``rows`` (prompted by their ``prompt_ids``) in ``env`` (default: one turn),
    sampled as ``sampling`` says, the rubric's scores per group, and timings: ``generate_s``; ``score_s``
    (time with scoring running); ``score_wait_s`` (scoring left after generation ended, on the critical
    path); ``score_hidden_s``. ``version``: the policy version of the engine's weights; ``context``: the
    model's context length."""
    futures: dict[int, Future] = {}
    groups: dict[int, EpisodeGroup] = {}
    graded: dict[int, list[str]] = {}
    env = env or ONE_TURN

    def done(i: int, episodes: list[Trajectory]) -> None:
        groups[i] = EpisodeGroup(rows[i].get("prompt_text", ""), list(episodes[0].prompt_ids),
                                 [episode_completion(t) for t in episodes], episodes)
        graded[i] = [env.graded_text(t) for t in episodes]  # the whole episode, or (code_repair) its last attempt
        if scorer.overlaps:
            futures[i] = scorer.submit(groups[i], rows[i], graded[i])

    t0 = time.perf_counter()
    run_episodes(engine, rows, sampling, env, encoder_of(engine), version, context, done)
    t1 = time.perf_counter()
    for i in range(len(rows)):  # inline scoring: everything now
        if i not in futures:
            futures[i] = scorer.submit(groups[i], rows[i], graded[i])
    scores = [futures[i].result() for i in range(len(rows))]
    t2 = time.perf_counter()
    busy = scorer.busy_s(t0)
    timings = {"generate_s": t1 - t0, "score_s": busy, "score_wait_s": t2 - t1,
               "score_hidden_s": max(0.0, busy - (t2 - t1))}
    return [groups[i] for i in range(len(rows))], scores, timings

"""Running a draw's episodes on an engine: the first turn of every episode as today's one call, then
every active episode's next turn sampled together, until each one is done.

Turn 0 is one ``engine.generate`` call over the rows' prompts with ``sampling`` as given (``n``
samples per prompt, the driver's seed per prompt), so a one-turn environment samples exactly what a
plain draw samples and finishes every episode inside that call. Later turns continue each active
episode from its whole token prefix (``Trajectory.token_ids()``: the ids sampled and appended, never
re-rendered text) with one sample each; episodes whose environment ended them leave the batch.
Episodes of one call share its ``max_tokens``, so active episodes are grouped by how much room
their budget leaves for the turn (usually one group).

Seeds: turn ``t >= 1`` of sample ``j`` of the prompt seeded ``s`` is seeded ``turn_seed(s, j, t)``,
a function of the episode alone. So an episode samples the same tokens whichever other episodes
share its call, in one process or on any Ray worker (the engines draw per-prompt seeds
independently). Unseeded draws stay unseeded.

``on_done(i, episodes)`` is called once per prompt, as soon as all ``n`` of its episodes are done
(for one turn: from the engine's own per-group callback, so scoring overlaps generation as
before). Nothing here imports torch or an engine class: ``engine`` is anything with
``generate(prompts, sampling, on_group=None)`` (rollouts.Engine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlvr.envs.base import ENVS, Encode, EnvBase
from rlvr.envs.episode import take_turn
from rlvr.envs.trajectory import Budget, Trajectory, fail
from rlvr.errors import DataError

OnDone = Callable[[int, list[Trajectory]], None]
_MASK = (1 << 62) - 1


def turn_seed(prompt_seed: int, sample: int, turn: int) -> int:
    """The seed of turn ``turn >= 1`` of sample ``sample`` of the prompt seeded ``prompt_seed``."""
    return ((prompt_seed * 1_000_003 + sample) * 10_007 + turn) & _MASK


def first_observation(kind: str, i: int, row: Mapping[str, Any], envs: list[Any], errors: list[str | None]) -> list[int]:
    """Reset the ``n`` environments of row ``i``; their shared first observation's ids (the prompt of turn 0).

    An environment whose ``reset`` raises (a server that failed past its retries) is noted in ``errors``
    and its episode ends ``env_error`` like a failed step; a bad row (``DataError``) stops the draw. The
    ``n`` samples of a row share one prompt, so environments that start them differently are an error."""
    first = []
    for j, env in enumerate(envs):
        try:
            first.append(list(env.reset(row).ids))
        except DataError:
            raise
        except Exception as exc:
            errors[j] = f"reset: {type(exc).__name__}: {exc}"
    if not first:  # every reset failed: the row's own prompt, so its episodes still run (and fail) as a group
        if "prompt_ids" not in row:
            raise RuntimeError(f"environment {kind!r}: every reset of row {i} failed: {errors[0]}")
        first = [list(row["prompt_ids"])]
    if any(ids != first[0] for ids in first[1:]):
        raise ValueError(f"environment {kind!r}: the {len(envs)} episodes of row {i} start from different first "
                         f"observations; an environment must start every sample of a row alike (seed it from the row)")
    return first[0]


def run_episodes(engine: Any, rows: Sequence[Mapping[str, Any]], sampling: Any, env_cfg: EnvBase, encode: Encode,
                 version: int = 0, context: int | None = None, on_done: OnDone | None = None) -> list[list[Trajectory]]:
    """Every episode of ``rows`` (``sampling.n`` per row, in row order) run to its end; see the module doc.

    ``sampling``: a ``rollouts.SamplingConfig`` (its ``max_tokens`` is each turn's default token limit);
    ``version``: the policy version of the engine's weights (kept on every model segment); ``context``:
    the model's context length (None: unknown, only ``env.max_total_tokens`` limits an episode)."""
    n = sampling.n
    budget: Budget = env_cfg.budget(sampling.max_tokens, context)
    seeds = sampling.prompt_seeds(len(rows))
    if env_cfg.kind not in ENVS:
        raise KeyError(f"env.kind: unknown {env_cfg.kind!r}; known: {sorted(ENVS)}")
    envs = [[ENVS[env_cfg.kind].build(env_cfg, encode) for _ in range(n)] for _ in rows]
    try:
        trajs: list[list[Trajectory | None]] = [[None] * n for _ in rows]
        prompts, reset_errors = [], [[None] * n for _ in rows]
        for i, row in enumerate(rows):
            prompts.append(first_observation(env_cfg.kind, i, row, envs[i], reset_errors[i]))
        reported = [False] * len(rows)

        def report(i: int) -> None:
            if not reported[i] and all(t is not None and t.done for t in trajs[i]):
                reported[i] = True
                if on_done is not None:
                    on_done(i, list(trajs[i]))  # type: ignore[arg-type]

        def first_turn(i: int, group: Any) -> None:
            for j, comp in enumerate(group.completions):
                start = Trajectory.start(prompts[i], budget)
                if start.done:
                    trajs[i][j] = start
                elif reset_errors[i][j] is not None:  # its environment never started: failed, not scored
                    trajs[i][j] = fail(start, reset_errors[i][j])
                else:
                    trajs[i][j] = take_turn(start, envs[i][j], list(comp.token_ids), list(comp.logprobs), comp.text,
                                            sampled_by(comp, version), comp.finish_reason)
            report(i)

        if sampling.max_tokens != budget.max_turn_tokens:  # env.max_turn_tokens set apart from sampling.max_tokens
            sampling = dataclasses.replace(sampling, max_tokens=budget.max_turn_tokens)
        extra = [s for s in env_cfg.stop_strings() if s not in sampling.stop]
        if extra:  # a tool call ends the turn at its closing tag
            sampling = dataclasses.replace(sampling, stop=(*sampling.stop, *extra))
        groups = engine.generate(prompts, sampling, on_group=first_turn)
        for i, group in enumerate(groups):  # an engine that does not call back
            if trajs[i][0] is None:
                first_turn(i, group)
        turn = 1
        while True:
            active = [(i, j) for i in range(len(rows)) for j in range(n) if not trajs[i][j].done]  # type: ignore[union-attr]
            if not active:
                break
            by_room: dict[int, list[tuple[int, int]]] = {}
            for i, j in active:
                by_room.setdefault(trajs[i][j].turn_room(), []).append((i, j))  # type: ignore[union-attr]
            for room, members in sorted(by_room.items()):
                turn_seeds = None if seeds is None else [turn_seed(seeds[i], j, turn) for i, j in members]
                call = dataclasses.replace(sampling, n=1, max_tokens=room, seed=None, seeds=turn_seeds)

                seen: set[int] = set()

                def next_turn(k: int, group: Any, members: list[tuple[int, int]] = members, seen: set[int] = seen) -> None:
                    i, j = members[k]
                    comp = group.completions[0]
                    seen.add(k)
                    trajs[i][j] = take_turn(trajs[i][j], envs[i][j], list(comp.token_ids), list(comp.logprobs),  # type: ignore[arg-type]
                                            comp.text, sampled_by(comp, version), comp.finish_reason)
                    report(i)

                prefixes = [trajs[i][j].token_ids() for i, j in members]  # type: ignore[union-attr]
                out = engine.generate(prefixes, call, on_group=next_turn)
                for k, group in enumerate(out):  # an engine that does not call back
                    if k not in seen:
                        next_turn(k, group)
            turn += 1
        for i in range(len(rows)):
            report(i)
        return trajs  # type: ignore[return-value]
    finally:  # environments holding something outside this process (a server session) let it go
        for env in (e for per_row in envs for e in per_row):
            close = getattr(env, "close", None)
            if callable(close):
                close()


def sampled_by(comp: Any, version: int) -> int | list[int]:
    """The versions that sampled ``comp``'s tokens: the engine's per-token record (a completion that spans an
    in-flight weight load, train.async.in_flight), else the draw's ``version`` for all of them."""
    versions = getattr(comp, "versions", None)
    return version if not versions else list(versions)

"""`rlvr bench rollouts --turns 3`: each engine's multi-turn episodes per second beside its one-turn figure."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("kind", ["static"])  # the runner is the same for every engine (tests/rlvr/envs)
def test_multi_turn_bench_reports_episodes_per_second_beside_one_turn(micro_model, kind):
    from rlvr.rollout.episode_bench import bench_episodes, format_episode_table

    (row,) = bench_episodes(micro_model, [kind], prompts=4, n=2, turns=3, turn_tokens=8)
    assert row["engine"] == kind and row["episodes"] == 8 and row["turns"] == 3
    assert row["one_turn_turns_mean"] == 1.0 and 1.0 < row["3_turns_turns_mean"] <= 3.0
    for tag in ("one_turn", "3_turns"):
        assert row[f"{tag}_episodes_per_s"] > 0 and row[f"{tag}_model_tokens_per_s"] > 0
    table = format_episode_table([row])
    assert f"| {kind} | float32 | 8 |" in table and "3 turns: episodes/s" in table

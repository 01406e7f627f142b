"""The agent hook end to end: RL steps on the micro base with agents calling the recording server over
HTTP on localhost through the real ``openai`` client, and agents that fail in each way."""

from __future__ import annotations

import textwrap

import pytest

from rlvr.logging import read_metrics

# Sample j of each row (the session id ends in '-<row>-<sample>'): 0 and 1 take two turns, sending back the
# text history they were given plus a line of their own; 2 raises after a call; 3 hangs past its deadline;
# 4 never calls the model. Each group keeps two valid samples, so it still trains.
AGENT = textwrap.dedent('''
    import time

    def rollout(client, row):
        j = int(str(client.base_url).rstrip("/").split("/")[-2].rsplit("-", 1)[1])
        if j == 4:
            return None
        first = client.completions.create(model="policy", prompt=row["prompt_text"], max_tokens=8)
        if j == 2:
            raise RuntimeError("the agent's own bug")
        if j == 3:
            time.sleep(6)
        history = row["prompt_text"] + first.choices[0].text + "\\nSo"
        client.completions.create(model="policy", prompt=history, max_tokens=8)
        return None
''')


@pytest.mark.parametrize("http", ["thread", pytest.param("process", marks=pytest.mark.slow)])
def test_agent_steps_train_on_the_sampled_tokens_and_failures_are_kept_out(micro_model, tmp_path, tiny_cfg, http):
    from rlvr.loop import train

    entry = tmp_path / "agent.py"
    entry.write_text(AGENT)
    cfg = tiny_cfg(model=micro_model, run_dir=tmp_path / "run", **{
        "train.steps": 2, "sampling.n": 5, "train.micro_batch_size": 20, "alarms.max_error_rate": 0.7,
        "agent": {"entry": f"{entry}:rollout", "concurrency": 8, "timeout_s": 3.0, "http": http}})
    train(cfg)
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:  # 4 prompts x 5 samples: 4 of each failure, 8 clean two-turn sessions
        assert (r["agent/agent_raised"], r["agent/agent_timeout"], r["agent/agent_no_calls"]) == (4.0, 4.0, 4.0)
        assert r["agent/agent_bad_return"] == 0.0
        assert r["outcome/infra_error"] == 12.0 and r["outcome/excluded"] == 12.0 and r["outcome/groups_dropped"] == 0
        # every clean session sent its history back as text and still is one sequence of two model turns:
        # the server continued from the sampled ids, and the learner's log-probs on them match the engine's
        assert r["agent/calls_mean"] == 2.0 and r["agent/sequences_mean"] == 1.0
        assert r["logp_diff_max"] < 1e-3


def test_agent_config_errors_name_the_field(tiny_cfg):
    from rlvr.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="env.kind='guess_number'"):
        tiny_cfg("env.kind=guess_number", "env.max_turns=2", agent={"entry": "a.py:rollout"})
    with pytest.raises((ConfigError, ValueError), match="rollout_workers"):
        tiny_cfg("cluster.rollout_workers=1", agent={"entry": "a.py:rollout"})
    with pytest.raises((ConfigError, ValueError), match="agent.entry"):
        tiny_cfg(agent={"entry": "no-function-here"})

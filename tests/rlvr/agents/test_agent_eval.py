"""Evaluation of a run with an agent goes through the agent: every held-out row is an agent session on the
recording server (greedy sessions at temperature 0, pass@k sessions at the eval's temperature), and the
agent's failures are counted, not scored as the policy's wrong answers."""

from __future__ import annotations

import json
import textwrap

# Row 1's sessions raise after one call; every other session asks the same prompt twice without a
# temperature (so the session's default decides it) and logs both texts.
AGENT = textwrap.dedent('''
    import json

    def rollout(client, row):
        session = str(client.base_url).rstrip("/").split("/")[-2]
        draw, i = session.split("-")[1:3]
        first = client.completions.create(model="policy", prompt=row["prompt_text"], max_tokens=16)
        if i == "1":
            raise RuntimeError("the agent's own bug")
        again = client.completions.create(model="policy", prompt=row["prompt_text"], max_tokens=16)
        with open(LOG, "a") as fh:
            fh.write(json.dumps([int(draw), first.choices[0].text, again.choices[0].text]) + "\\n")
        return None
''')


def test_eval_runs_the_agent_greedy_and_counts_its_failures(micro_model, tmp_path, tiny_cfg):
    from rlvr.evaluate import evaluate_model

    log = tmp_path / "sessions.jsonl"
    entry = tmp_path / "agent.py"
    entry.write_text(f"LOG = {str(log)!r}\n" + AGENT)
    cfg = tiny_cfg(model=micro_model, **{"eval.num_prompts": 2, "eval.k": 2,
                                         "agent": {"entry": f"{entry}:rollout", "concurrency": 4, "timeout_s": 60}})
    m = evaluate_model(cfg)

    # greedy: row 0 ran clean with two calls, row 1's agent raised (one failure, counted as unsolved)
    assert m["agent/agent_raised"] == 1.0 and m["agent_failures"] == 1.0
    assert m["agent/agent_timeout"] == m["agent/agent_no_calls"] == m["agent/agent_bad_return"] == 0.0
    assert m["agent/calls_mean"] == 2.0 and m["turns"] == 2.0
    assert m["pass@1"] <= 0.5 and "pass@2" in m
    assert m["sampled_error_rate"] == 0.5  # row 1's two pass@k sessions failed too

    runs = [json.loads(line) for line in log.read_text().splitlines()]
    greedy = [r for r in runs if r[0] == 0]
    sampled = [r for r in runs if r[0] == 1]
    assert len(greedy) == 1 and len(sampled) == 2  # the clean sessions: row 0 once greedy, k=2 times sampled
    # a call without a temperature is sampled at the session's: greedy (0) gives the same text under a
    # new seed, the pass@k sessions (temperature 1) do not
    assert greedy[0][1] == greedy[0][2]
    assert any(first != again for _, first, again in sampled)


ASYNC_AGENT = textwrap.dedent('''
    async def rollout(client, row):
        async with client:  # an agent may close its client: the next session gets its own
            reply = await client.completions.create(model="policy", prompt=row["prompt_text"], max_tokens=8)
        return {"completion": reply.choices[0].text}
''')


def test_async_agents_are_evaluated_too(micro_model, tmp_path, tiny_cfg):
    from rlvr.evaluate import evaluate_model

    entry = tmp_path / "agent.py"
    entry.write_text(ASYNC_AGENT)
    cfg = tiny_cfg(model=micro_model, **{"eval.num_prompts": 3, "eval.k": 2,
                                         "agent": {"entry": f"{entry}:rollout", "concurrency": 2}})
    m = evaluate_model(cfg)
    assert m["agent_failures"] == 0.0 and m["sampled_error_rate"] == 0.0 and m["agent/calls_mean"] == 1.0


"""What the trainer does with a score's outcome (issue 29 item 2): a check that failed for reasons not the
policy's is retried (``rewards.retries``), then kept out of its group's baseline and out of the loss,
never trained as a 0; a group left with fewer than two valid samples is dropped and counted; the step
logs a count per outcome and alarms per outcome. Real verifiers and the real scoring, batching and
advantage code; the faults are injected by verifiers written for the test."""

from __future__ import annotations

import hashlib

import pytest
import torch

from rlvr.alarms import Alarms, RewardAlarm
from rlvr.algorithms import ADVANTAGES, AlgorithmConfig
from rlvr.config import AlarmsConfig
from rlvr.draw import outcome_metrics, rollout_metrics, sample_groups
from rlvr.pipeline import ScoredGroup
from rlvr.scoring import Scorer
from rlvr.train.batch import build_batch
from rollouts import Completion, Group
from verifiers import InfraError, Rubric, Score, get

ALGO = AlgorithmConfig()


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Cheap:
    """A deterministic verifier: reward 1 for about a third of the completions (by a hash of the text)."""

    name = "cheap"

    def score(self, completion, task):
        ok = _h(completion) % 3 == 0
        return Score(float(ok), ok, {})


class Faulty(Cheap):
    """``Cheap`` whose machinery fails on 5% of the completions: 4 in 5 of those only on the first try
    (transient), 1 in 5 on every try (persistent). Raises `InfraError`, as a broken pool or judge would."""

    def __init__(self):
        self.tries: dict[str, int] = {}

    @staticmethod
    def fault(text: str) -> str | None:
        h = _h("fault:" + text) % 1000
        return None if h >= 50 else ("persistent" if h < 10 else "transient")

    def score(self, completion, task):
        self.tries[completion] = self.tries.get(completion, 0) + 1
        kind = self.fault(completion)
        if kind == "persistent" or (kind == "transient" and self.tries[completion] == 1):
            raise InfraError(f"judge answered 500 for {completion!r}")
        return super().score(completion, task)


def group(texts, finish="stop"):
    return Group("p", [5, 6], [Completion(t, [7, 8, 9][: 1 + i % 3], [-0.5] * (1 + i % 3), finish)
                               for i, t in enumerate(texts)])


def scored(rewards_and_outcomes):
    """One ScoredGroup per list of (reward, outcome)."""
    out = []
    for g, items in enumerate(rewards_and_outcomes):
        scores = [Score(r, None if o in ("verifier_error", "infra_error") else r > 0, {},
                        "boom" if o in ("verifier_error", "infra_error") else None, o) for r, o in items]
        out.append(ScoredGroup({"question": f"q{g}"}, group([f"g{g}-{i}" for i in range(len(items))]), scores))
    return out


def test_a_failed_sample_is_masked_and_kept_out_of_its_group_baseline():
    groups = scored([[(1.0, "correct"), (0.0, "wrong"), (1.0, "correct"), (0.0, "infra_error")],
                     [(0.0, "wrong"), (1.0, "correct"), (0.0, "unparsed"), (0.0, "policy_timeout")]])
    batch, inp = build_batch(groups, pad_id=0, algo=ALGO, max_tokens=8)
    assert inp.valid.tolist() == [True, True, True, False, True, True, True, True]
    assert batch.response_mask[3].sum() == 0 and all(batch.response_mask[i].sum() > 0 for i in (0, 1, 2, 4))
    adv = ADVANTAGES["dr_grpo"](inp, ALGO)
    # g0 over its 3 valid samples {1, 0, 1}: mean 2/3; g1 {0, 1, 0, 0} (the policy's own zeros count): mean 1/4
    per_row = [float(adv[i][batch.response_mask[i] > 0][0]) if batch.response_mask[i].any() else 0.0 for i in range(8)]
    assert per_row == pytest.approx([1 / 3, -2 / 3, 1 / 3, 0.0, -0.25, 0.75, -0.25, -0.25], abs=1e-7)
    assert torch.equal(adv[3], torch.zeros_like(adv[3]))


def test_a_group_with_fewer_than_two_valid_samples_is_dropped_and_counted():
    groups = scored([[(1.0, "correct"), (0.0, "verifier_error"), (0.0, "infra_error"), (0.0, "infra_error")],
                     [(1.0, "correct"), (0.0, "wrong"), (0.0, "infra_error"), (1.0, "correct")],
                     [(0.0, "wrong"), (1.0, "correct"), (0.0, "wrong"), (0.0, "wrong")]])
    batch, inp = build_batch(groups, pad_id=0, algo=ALGO, max_tokens=8)
    assert inp.valid.tolist() == [False] * 4 + [True, True, False, True] + [True] * 4
    assert batch.response_mask[:4].sum() == 0  # the whole first group carries no loss
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        adv = ADVANTAGES[name](inp, AlgorithmConfig())
        assert torch.equal(adv[:4], torch.zeros_like(adv[:4])) and adv[4:].abs().sum() > 0, name
    m = rollout_metrics(groups)
    assert m["outcome/groups_dropped"] == 1.0 and m["outcome/excluded"] == 5.0  # 4 of group 0, 1 of group 1
    assert (m["outcome/infra_error"], m["outcome/verifier_error"], m["outcome/correct"], m["outcome/wrong"]) == \
        (3.0, 1.0, 4.0, 4.0)
    assert m["verifier_errors"] == 4.0  # the older count is unchanged


def test_the_rubric_scorer_labels_retries_and_truncation():
    rubric = Rubric([(get("arith"), 1.0), (get("r1_format"), 0.1)], retries=1)
    scorer = Scorer(rubric, workers=1)
    try:
        g = Group("p", [1], [Completion("<think>x</think> <answer>7</answer>", [1], [0.0], "length"),
                             Completion("<think>x</think> <answer>8</answer>", [1], [0.0], "length"),
                             Completion("<think>x</think> <answer>8", [1], [0.0], "length"),
                             Completion("<think>x</think> <answer>8</answer>", [1], [0.0], "stop")])
        scores = scorer.submit(g, {"answer": "7"}).result()
    finally:
        scorer.close()
    # cut at max_tokens: right stays correct; a wrong or unread answer is truncated (same reward)
    assert [s.outcome for s in scores] == ["correct", "truncated", "truncated", "wrong"]
    assert [s.reward for s in scores] == [1.1, 0.1, 0.0, 0.1]


def test_scoring_burst_of_10000_with_5_percent_infra_faults():
    """10,000 samples (1,250 groups of 8), 5% of them hit by an infrastructure fault (4% transient, 1%
    persistent): no sample is an unlabelled 0, and every group without a persistent fault has advantages
    bit-identical to a fault-free run (grpo, dr_grpo, rloo); a group with one has, on its valid samples, the
    advantages of those samples alone."""
    n_groups, n = 1250, 8
    texts = [[f"prompt {g} completion {i}" for i in range(n)] for g in range(n_groups)]
    rows = [{"question": f"q{g}"} for g in range(n_groups)]

    def run(verifier):
        scorer = Scorer(Rubric([(verifier, 1.0)], retries=2), workers=1)
        try:
            return [ScoredGroup(row, group(t), scorer.submit(group(t), row).result()) for row, t in zip(rows, texts)]
        finally:
            scorer.close()

    clean, faulty = run(Cheap()), run(Faulty())
    kinds = [[Faulty.fault(t) for t in ts] for ts in texts]
    flat = [k for ks in kinds for k in ks]
    assert 400 < sum(k is not None for k in flat) < 600 and 50 < flat.count("persistent") < 150  # ~5% and ~1%

    for sg_clean, sg, ks in zip(clean, faulty, kinds):
        for c, s, k in zip(sg_clean.scores, sg.scores, ks):
            if k == "persistent":  # labelled as the machinery's, retried to the budget, never a plain 0
                assert s.outcome == "infra_error" and not s.trainable and s.metrics["retries"] == 2.0
                assert "judge answered 500" in s.error
            elif k == "transient":  # retried once, then scored as if nothing had happened
                assert (s.reward, s.correct, s.outcome, s.metrics["retries"]) == (c.reward, c.correct, c.outcome, 1.0)
            else:
                assert s == c
            if s.reward == 0 and s.trainable:  # a zero the policy is trained on is a real wrong answer
                assert s.outcome == "wrong" and k != "persistent"

    m = outcome_metrics(faulty)
    assert m["outcome/infra_error"] == flat.count("persistent")
    assert m["outcome/retried"] == sum(k is not None for k in flat)
    assert m["outcome/correct"] + m["outcome/wrong"] + m["outcome/infra_error"] == n_groups * n

    _, inp_clean = build_batch(clean, pad_id=0, algo=ALGO, max_tokens=8)
    _, inp = build_batch(faulty, pad_id=0, algo=ALGO, max_tokens=8)
    hit = torch.tensor([k == "persistent" for k in flat])
    assert torch.equal(inp.valid, ~hit) and inp_clean.valid.all()  # no group is left with fewer than 2 here
    affected = torch.tensor([any(k == "persistent" for k in ks) for ks in kinds]).repeat_interleave(n)
    assert 0 < int(affected.sum()) < n_groups * n
    for name in ("grpo", "dr_grpo", "rloo"):
        cfg = AlgorithmConfig()
        a_clean, a = ADVANTAGES[name](inp_clean, cfg), ADVANTAGES[name](inp, cfg)
        assert torch.equal(a[~affected], a_clean[~affected]), name  # bit for bit
        assert torch.equal(a[hit], torch.zeros_like(a[hit])), name
        for g in torch.nonzero(affected.view(n_groups, n).any(1)).flatten().tolist():  # the valid ones, alone
            rows_g = [g * n + i for i in range(n) if kinds[g][i] != "persistent"]
            alone = ADVANTAGES[name](type(inp)(inp_clean.rewards[rows_g], torch.zeros(len(rows_g), dtype=torch.long),
                                               inp_clean.mask[rows_g]), cfg)
            torch.testing.assert_close(a[rows_g], alone, rtol=0, atol=1e-6)


def test_dynamic_sampling_reads_only_the_valid_samples():
    # valid rewards all 1 (the failed 0 must not make the group look informative); group 2 informative;
    # group 3 left with one valid sample: no signal
    groups = scored([[(1.0, "correct"), (1.0, "correct"), (0.0, "infra_error")],
                     [(1.0, "correct"), (0.0, "wrong"), (0.0, "verifier_error")],
                     [(1.0, "correct"), (0.0, "infra_error"), (0.0, "infra_error")]])
    batch, drawn, stats = sample_groups(lambda rnd, k: groups if rnd == 0 else [], want=1, dynamic=True, max_rounds=1)
    assert batch == [groups[1]] and stats["groups_dropped"] == 2.0


def test_alarms_per_outcome():
    def step(outcomes):
        return scored([[(0.0 if o != "correct" else 1.0, o) for o in outcomes]])

    alarms = Alarms(AlarmsConfig(max_error_rate=0.5, zero_reward_steps=0), ["code"])
    alarms.check(1, step(["infra_error", "infra_error", "verifier_error", "correct"]), {})  # 2/4 and 1/4: not > 0.5
    with pytest.raises(RewardAlarm, match=r"(?s)3 of 4 samples ended infra_error \(checks failed in the machinery.*"
                                          r"max_error_rate=0.5.*outcome=infra_error"):
        alarms.check(2, step(["infra_error"] * 3 + ["correct"]), {})
    with pytest.raises(RewardAlarm, match=r"3 of 4 samples ended verifier_error \(checks failed in the verifier"):
        alarms.check(3, step(["verifier_error"] * 3 + ["correct"]), {})
    timeouts = Alarms(AlarmsConfig(max_outcome_rates={"policy_timeout": 0.25}, zero_reward_steps=0), ["code"])
    with pytest.raises(RewardAlarm, match=r"2 of 4 samples ended policy_timeout.*max_outcome_rates.policy_timeout=0.25"):
        timeouts.check(1, step(["policy_timeout", "policy_timeout", "wrong", "correct"]), {})
    with pytest.raises(ValueError, match="unknown outcome 'timeout'"):
        AlarmsConfig(max_outcome_rates={"timeout": 0.5})


def test_retries_come_from_the_config(tiny_cfg):
    from rlvr.components import build_rubric

    assert build_rubric(tiny_cfg()).retries == 1  # the default
    assert build_rubric(tiny_cfg("rewards.retries=3")).retries == 3
    with pytest.raises(Exception, match="retries"):
        tiny_cfg("rewards.retries=-1")


def test_a_checkpointed_group_keeps_its_outcomes():
    sg = scored([[(1.0, "correct"), (0.0, "infra_error"), (0.0, "unparsed")]])[0]
    back = ScoredGroup.from_json(sg.to_json())
    assert [s.outcome for s in back.scores] == ["correct", "infra_error", "unparsed"]
    assert torch.equal(back.valid, sg.valid)

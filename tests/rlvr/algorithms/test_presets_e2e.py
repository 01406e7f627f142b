"""Every algorithm preset end to end (configs/<preset>.yaml on the micro model), plus the loop's
algorithm plumbing: dynamic sampling rounds, DAPO overlong shaping, KL in the reward, the critic.

The micro model almost never answers correctly, so the smoke runs add a test verifier whose
reward depends on the completion's length parity: rewards differ within groups, advantages are
non-zero and every preset has something to learn from. Groups of 8: a group whose samples all have
one parity (1 in 128, where groups of 4 gave 1 in 8) leaves a step of two groups without a gradient
only once in ~16,000, whatever CPU pretrained the micro model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch

import verifiers
from rlvr.algorithms import PRESETS, AlgorithmConfig
from rlvr.config import TrainConfig, load_config
from rlvr.draw import sample_groups
from rlvr.logging import read_metrics
from rlvr.loop import train
from rlvr.pipeline import ScoredGroup
from rlvr.train.batch import build_batch
from rollouts import Completion, Group
from verifiers import Score


@verifiers.register("test_length_parity")
class LengthParity:
    """Reward 1 for a completion of odd character length: a signal the micro model can follow."""

    name = "test_length_parity"

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        return Score(float(len(completion) % 2), None, {})


PRESET_METRICS = {
    "grpo": {"kl"},  # k3 KL in the loss against the reference model
    "dapo": {"sampling_rounds", "groups_drawn", "groups_dropped", "groups_padded", "informative_frac"},
    "ppo": {"value_loss", "value_mean", "explained_variance", "value_clip_frac", "critic_grad_norm"},
}
CASES = [(p, []) for p in PRESETS] + [
    ("reinforce_pp", ["algorithm.kl_coef=0.05"]),  # k1 KL subtracted in the reward
    ("dapo", ["algorithm.overlong_filter=true"]),
]


@pytest.mark.parametrize(("preset", "extra"), CASES, ids=[p + ("+" + "+".join(e) if e else "") for p, e in CASES])
def test_preset_trains_end_to_end(preset, extra, micro_model, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, f"configs/{preset}.yaml", [
        f"model={micro_model}", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=2", "sampling.n=8",
        "sampling.max_tokens=12", "train.micro_batch_size=16", "train.threads=1", "optim.lr=1e-3",
        "eval.every=0", "eval.num_prompts=2", "eval.k=1", "eval.max_tokens=8",
        "logging.progress=false", "logging.tensorboard=false",
        "rewards=[{verifier: test_length_parity, weight: 1.0}, {verifier: r1_format, weight: 0.1}]", *extra,
    ])
    assert cfg.algorithm.preset == preset
    summary = train(cfg)

    recs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        bad = {k: v for k, v in r.items() if k != "kind" and not math.isfinite(v)}
        assert not bad, bad
        assert PRESET_METRICS.get(preset, set()) <= set(r), set(r)
        assert r["grad_norm"] > 0
    if preset == "ppo":
        assert recs[0]["value_loss"] > 0 and recs[0]["value_mean"] == 0.0  # zero-initialised head
        assert recs[1]["value_mean"] != 0.0  # ... that the first critic step moved
    if extra and extra[0].startswith("algorithm.kl_coef"):
        assert "kl" in recs[0] and recs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    base = AutoModelForCausalLM.from_pretrained(micro_model)
    final = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    changed = [n for (n, a), (_, b) in zip(base.named_parameters(), final.named_parameters()) if not torch.equal(a, b)]
    assert changed


# ------------------------------------------------------------------------------ loop plumbing


def scored_group(rewards, lengths=None, finish=None, prompt_len=3) -> ScoredGroup:
    lengths = lengths or [2] * len(rewards)
    finish = finish or ["stop"] * len(rewards)
    comps = [Completion("x" * n, list(range(10, 10 + n)), [-0.5] * n, f) for n, f in zip(lengths, finish)]
    return ScoredGroup({"prompt": "p"}, Group("p", list(range(1, 1 + prompt_len)), comps),
                       [Score(float(r)) for r in rewards])


def test_sample_groups_without_dynamic_sampling_is_one_round():
    calls = []

    def draw(rnd, k):
        calls.append((rnd, k))
        return [scored_group([1, 1]), scored_group([0, 1])]

    batch, drawn, stats = sample_groups(draw, want=2, dynamic=False, max_rounds=5)
    assert calls == [(0, 2)] and len(batch) == 2 and drawn == batch and stats == {}


def test_sample_groups_draws_rounds_until_full_then_trims():
    rounds = [[scored_group([1, 1]), scored_group([0, 1]), scored_group([2, 1])],  # 2 of 3 informative
              [scored_group([1, 0]), scored_group([0, 0.1]), scored_group([0.5, 0.5])]]
    calls = []

    def draw(rnd, k):
        calls.append((rnd, k))
        return rounds[rnd][:k]

    batch, drawn, stats = sample_groups(draw, want=3, dynamic=True, max_rounds=3)
    # round 1: 1 missing / informative share 2/3 -> 2 prompts, both informative; one trimmed
    assert calls == [(0, 3), (1, 2)]
    assert [sg.rewards.tolist() for sg in batch] == [[0, 1], [2, 1], [1, 0]]
    assert len(drawn) == 5
    assert stats == {"sampling_rounds": 2.0, "groups_drawn": 5.0, "groups_dropped": 1.0, "groups_padded": 0.0,
                     "informative_frac": 0.8}


def test_sample_groups_tops_up_with_dropped_groups_when_rounds_run_out():
    calls = []

    def draw(rnd, k):
        calls.append((rnd, k))
        return [scored_group([1, 1]), scored_group([0, 1]), scored_group([0, 0])][:k]

    batch, drawn, stats = sample_groups(draw, want=3, dynamic=True, max_rounds=2)
    assert calls == [(0, 3), (1, 3)] and len(drawn) == 6  # 2 missing / (1/3) = 6, capped at 3
    assert [sg.rewards.tolist() for sg in batch] == [[0, 1], [0, 1], [1, 1]]  # 2 informative + 1 padding
    assert stats["groups_padded"] == 1.0 and stats["groups_dropped"] == 4.0 and stats["sampling_rounds"] == 2.0


def test_sample_groups_with_nothing_informative_pads_the_whole_batch():
    batch, _, stats = sample_groups(lambda rnd, k: [scored_group([1, 1])] * k, want=2, dynamic=True, max_rounds=3)
    assert len(batch) == 2 and stats["groups_padded"] == 2.0 and stats["sampling_rounds"] == 3.0


def test_build_batch_alignment_and_dapo_overlong_shaping():
    # max_tokens 10, buffer 0.2 -> cache 2: no penalty up to 8 tokens, -0.5 at 9, -1 at 10 (truncated)
    sg = scored_group([1.0, 1.0, 1.0], lengths=[8, 9, 10], finish=["stop", "stop", "length"])
    algo = AlgorithmConfig(overlong_buffer_frac=0.2, overlong_penalty_factor=1.0, overlong_filter=True)
    batch, inp = build_batch([sg], pad_id=0, algo=algo, max_tokens=10)
    torch.testing.assert_close(inp.rewards, torch.tensor([1.0, 0.5, 0.0]))
    assert batch.input_ids.shape == (3, 13) and batch.response_mask.shape == (3, 12)
    # prompt of 3 tokens: the first response token is the target of column 2
    assert batch.response_mask[0].tolist() == [0, 0] + [1] * 8 + [0, 0]
    assert batch.response_mask[2].sum() == 0  # truncated: filtered out of the loss
    assert inp.mask is batch.response_mask and inp.group_ids.tolist() == [0, 0, 0]
    plain_batch, plain = build_batch([sg], pad_id=0, algo=AlgorithmConfig(), max_tokens=10)
    torch.testing.assert_close(plain.rewards, torch.ones(3))
    assert plain_batch.response_mask[2].sum() == 10


def test_critic_values_are_target_aligned_and_step_fits_returns(micro_model):
    from transformers import AutoModelForCausalLM

    from rlvr.algorithms import AdvantageInputs
    from rlvr.config import TrainLoopConfig
    from rlvr.train.critic import Critic
    from rlvr.train.learner import RLBatch

    torch.set_num_threads(1)
    policy = AutoModelForCausalLM.from_pretrained(micro_model)
    algo = AlgorithmConfig(preset="ppo", critic_lr=3e-3, value_clip_eps=None)
    critic = Critic.for_policy(policy, algo, train=TrainLoopConfig(micro_batch_size=1))
    ids = torch.tensor([[5, 6, 7, 8, 9], [4, 9, 7, 10, 0]])  # distinct states, so both targets can be fit
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1.0, 1.0], [0, 0, 1.0, 0]])
    batch = RLBatch(ids, attn, mask, torch.zeros_like(mask), torch.zeros_like(mask))
    v0 = critic.values(batch)
    assert v0.shape == (2, 4) and v0.abs().max() == 0  # zero-initialised head
    with torch.no_grad():
        critic.model.value_head.proj.bias.fill_(0.25)
    full = critic.model(ids, attn)  # [B, L]
    torch.testing.assert_close(critic.values(batch), full[:, :-1] * mask)
    inp = AdvantageInputs(torch.tensor([1.0, -1.0]), torch.tensor([0, 1]), mask, values=critic.values(batch))
    # gamma = lambda = 1: every response token's return is its row's reward
    first = critic.step(batch, inp)
    assert first["value_loss"] == pytest.approx(0.5 * (2 * 0.75**2 + 1.25**2) / 3, abs=1e-6)
    assert first["value_mean"] == pytest.approx(0.25) and first["return_mean"] == pytest.approx(1 / 3)
    losses = [critic.step(batch, inp)["value_loss"] for _ in range(5)]
    assert losses[-1] < first["value_loss"]

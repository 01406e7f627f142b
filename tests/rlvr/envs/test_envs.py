"""Environments and token-in/token-out episodes (issue 26, first slice): the trajectory's invariants,
the budgets' finish reasons, the registry, guess_number on a scripted episode, the learner's packing
(one-turn episodes pack exactly as build_batch does; environment tokens carry no loss) and the
hand-derived gradients of each loss aggregation mode. No model: ids, log-probs and rewards are given."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from rlvr.algorithms import ADVANTAGES, AlgorithmConfig, LossInputs, policy_objective
from rlvr.envs import ENVS, EnvConfig, Observation, make_env, take_turn
from rlvr.envs.trajectory import (
    Budget,
    EnvSegment,
    ModelSegment,
    Source,
    Trajectory,
    append_observation,
    append_turn,
    fail,
    one_turn,
    record_step,
)
from rlvr.pipeline import ScoredGroup
from rlvr.train.batch import build_batch
from rlvr.train.episodes import build_episode_batch
from rlvr.train.learner import RLBatch, group_spans
from rollouts.types import Completion, Group
from verifiers import Score

P, M, E = Source.PROMPT, Source.MODEL, Source.ENV


def encode(text: str) -> list[int]:
    """A toy tokenizer: one id per character (1000 + code point), so ids tell where they came from."""
    return [1000 + ord(c) for c in text]


def three_turns(budget: Budget | None = None) -> Trajectory:
    """prompt [1 2 3] | model [10 11] v0 | env [50] | model [12] v1 | env [51 52] | model [13 14 15] v1 (done)."""
    t = Trajectory.start([1, 2, 3], budget or Budget(max_turns=3, max_turn_tokens=8))
    t = append_turn(t, [10, 11], [-0.5, -0.25], version=0)
    t = record_step(t, [50], False, {"k": 1})
    t = append_turn(t, [12], [-1.0], version=1, finish="length")
    t = record_step(t, [51, 52], False)
    t = append_turn(t, [13, 14, 15], [-0.1, -0.2, -0.3], version=1)
    return record_step(t, None, True)


# -- the trajectory ---------------------------------------------------------------------------------------

def test_ids_are_appended_as_given_with_their_provenance():
    t = three_turns()
    assert t.token_ids() == [1, 2, 3, 10, 11, 50, 12, 51, 52, 13, 14, 15] and len(t) == 12
    assert t.sources() == [P, P, P, M, M, E, M, E, E, M, M, M]
    assert t.loss_mask() == [0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    assert t.engine_logprobs() == [0.0] * 3 + [-0.5, -0.25, 0.0, -1.0, 0.0, 0.0, -0.1, -0.2, -0.3]
    assert t.versions() == [-1] * 3 + [0, 0, -1, 1, -1, -1, 1, 1, 1]
    assert t.turns_per_token() == [-1] * 3 + [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert t.turns == 3 and t.model_tokens() == 6
    assert [s.finish for s in t.model_segments()] == ["stop", "length", "stop"]
    assert t.finish_reason == "stop" and t.infos == ({"k": 1}, {}, {})  # done after a turn that stopped
    # every per-token list is as long as the sequence
    assert {len(f()) for f in (t.sources, t.loss_mask, t.engine_logprobs, t.versions, t.turns_per_token)} == {12}


def test_json_round_trip_is_exact():
    t = fail(append_turn(record_step(append_turn(Trajectory.start([7, 8], Budget(max_turns=4, max_turn_tokens=3,
                                                                               max_observation_tokens=2)),
                                                 [1], [-0.123456789012345], 2), [4, 5, 6], False), [9], [-1e-9], 3),
             "RuntimeError: boom")
    assert t.segments[1] == EnvSegment((4, 5), 0, cut=1)
    back = Trajectory.from_json(json.loads(json.dumps(t.to_json())))
    assert back == t and back.engine_logprobs() == t.engine_logprobs()
    assert back.finish_reason == "env_error" and back.error == "RuntimeError: boom"
    assert Trajectory.from_json(json.loads(json.dumps(three_turns().to_json()))) == three_turns()


def test_the_last_turn_finish_is_the_one_turn_finish():
    assert one_turn([1, 2], [3, 4], [-1.0, -2.0], "stop", max_tokens=4).finish_reason == "stop"
    cut = one_turn([1, 2], [3, 4], [-1.0, -2.0], "length", max_tokens=2)
    assert cut.finish_reason == "length" and cut.token_ids() == [1, 2, 3, 4] and cut.loss_mask() == [0, 0, 1, 1]


def test_max_turn_tokens_cuts_a_turn_and_the_episode_goes_on():
    t = append_turn(Trajectory.start([1], Budget(max_turns=2, max_turn_tokens=2)), [5, 6, 7], [-1.0] * 3, 0)
    assert t.token_ids() == [1, 5, 6] and t.model_segments()[0].finish == "length" and not t.done


def test_max_total_tokens_cuts_a_turn_and_ends_the_episode():
    b = Budget(max_turns=5, max_turn_tokens=4, max_total_tokens=6)
    t = record_step(append_turn(Trajectory.start([1, 2], b), [3], [-1.0], 0), [4], False)  # 4 tokens
    assert t.turn_room() == 2  # 6 - 4 < max_turn_tokens
    t = append_turn(t, [5, 6], [-1.0, -1.0], 0, finish="length")
    assert t.finish_reason == "max_tokens" and len(t) == 6 and t.turn_room() == 0
    with pytest.raises(ValueError, match="over"):
        append_turn(t, [7], [-1.0], 0)


def test_the_context_binds_when_it_is_smaller():
    b = Budget(max_turns=5, max_turn_tokens=4, max_total_tokens=100, context=5)
    t = append_turn(Trajectory.start([1, 2], b), [3, 4, 5, 6], [-1.0] * 4, 0)  # cut to the 3 tokens left
    assert t.token_ids() == [1, 2, 3, 4, 5] and t.finish_reason == "context"
    assert Trajectory.start([1, 2, 3], Budget(max_total_tokens=3)).finish_reason == "max_tokens"


def test_an_observation_without_room_for_a_reply_is_not_appended():
    b = Budget(max_turns=5, max_turn_tokens=2, max_total_tokens=6)
    t = append_turn(Trajectory.start([1, 2], b), [3], [-1.0], 0)
    t2 = record_step(t, [9, 9, 9], False)  # 3 + 3 = 6: no room for a model token
    assert t2.finish_reason == "max_tokens" and t2.token_ids() == [1, 2, 3]
    t3 = record_step(t, [9, 9], False)  # 5 < 6: room for one more token
    assert not t3.done and t3.turn_room() == 1


def test_max_observation_tokens_keeps_the_head():
    t = append_turn(Trajectory.start([1], Budget(max_turns=2, max_observation_tokens=2)), [3], [-1.0], 0)
    t = append_observation(t, [7, 8, 9, 10])
    assert t.token_ids() == [1, 3, 7, 8] and t.segments[-1].cut == 2


def test_max_turns_ends_the_episode_without_the_unread_observation():
    t = append_turn(Trajectory.start([1], Budget(max_turns=1)), [3], [-1.0], 0)
    t = record_step(t, [7], False)
    assert t.finish_reason == "max_turns" and t.token_ids() == [1, 3]


def test_misuse_is_refused():
    t = Trajectory.start([1])
    with pytest.raises(ValueError, match="log-probs"):
        append_turn(t, [1, 2], [-1.0], 0)
    with pytest.raises(ValueError, match="follows a model turn"):
        append_observation(t, [5])
    with pytest.raises(ValueError, match="finish"):
        append_turn(t, [1], [-1.0], 0, finish="eos")
    with pytest.raises(ValueError, match="observation"):
        record_step(append_turn(Trajectory.start([1], Budget(max_turns=3)), [2], [-1.0], 0), None, False)
    with pytest.raises(ValueError, match="max_turns"):
        Budget(max_turns=0)


# -- environments -------------------------------------------------------------------------------------------

def test_registry_and_config_union():
    assert {"single_turn", "guess_number"} <= set(ENVS)
    ta = TypeAdapter(EnvConfig)
    assert ta.validate_python({}).kind == "single_turn"
    cfg = ta.validate_python({"kind": "guess_number", "max_turns": 3, "max_total_tokens": 64})
    assert cfg.budget(max_tokens=16, context=128) == Budget(3, 16, 64, None, 128)
    with pytest.raises(ValidationError, match="nope"):
        ta.validate_python({"kind": "nope"})
    with pytest.raises(ValidationError, match="exactly one turn"):
        ta.validate_python({"kind": "single_turn", "max_turns": 2})
    with pytest.raises(ValidationError, match="secret_key"):  # a kind's fields are its own
        ta.validate_python({"kind": "single_turn", "secret_key": "x"})


def test_single_turn_is_the_one_turn_case():
    env = make_env(TypeAdapter(EnvConfig).validate_python({}), encode)
    obs = env.reset({"prompt_ids": [1, 2], "prompt_text": "hi"})
    assert obs == Observation([1, 2], "hi")
    t = take_turn(Trajectory.start(obs.ids, Budget(max_turn_tokens=4)), env, [3, 4], [-1.0, -2.0], "ab", 0)
    assert t == one_turn([1, 2], [3, 4], [-1.0, -2.0], "stop", max_tokens=4, text="ab") and t.text() == "ab"


def test_guess_number_scripted_episode():
    cfg = TypeAdapter(EnvConfig).validate_python({"kind": "guess_number", "max_turns": 5})
    env = make_env(cfg, encode)
    obs = env.reset({"secret": 7, "prompt_ids": [1, 2, 3], "prompt_text": "guess 1..10"})
    t = Trajectory.start(obs.ids, cfg.budget(max_tokens=16))
    script = [("5", "\nhigher\n"), ("I think 8", "\nlower\n"), ("no idea", "\nno number found, guess again\n")]
    for i, (said, reply) in enumerate(script):
        t = take_turn(t, env, encode(said), [-0.5] * len(said), said, version=i)
        assert not t.done and t.segments[-1].ids == tuple(encode(reply))  # the observation's ids, as encoded
    t = take_turn(t, env, encode("7"), [-0.5], "7", version=3)
    assert t.finish_reason == "stop" and t.turns == 4
    assert [i.get("guess") for i in t.infos] == [5, 8, None, 7] and t.infos[-1]["solved"] is True
    assert [i["malformed"] for i in t.infos] == [False, False, True, False]
    assert t.token_ids() == [1, 2, 3] + sum((encode(s) + encode(r) for s, r in script), []) + encode("7")
    assert sum(t.loss_mask()) == len("5" + "I think 8" + "no idea" + "7")


def test_guess_number_runs_out_of_turns():
    cfg = TypeAdapter(EnvConfig).validate_python({"kind": "guess_number", "max_turns": 2})
    env = make_env(cfg, encode)
    t = Trajectory.start(env.reset({"secret": 3, "prompt_ids": [1]}).ids, cfg.budget(max_tokens=8))
    t = take_turn(t, env, encode("1"), [-1.0], "1", 0)
    t = take_turn(t, env, encode("2"), [-1.0], "2", 0)
    assert t.finish_reason == "max_turns" and t.turns == 2 and t.sources()[-1] == M


def test_guess_number_needs_a_secret():
    env = make_env(TypeAdapter(EnvConfig).validate_python({"kind": "guess_number"}), encode)
    with pytest.raises(ValueError, match="'secret'"):
        env.reset({"prompt_ids": [1]})


def test_an_environment_that_raises_fails_the_episode():
    class Broken:
        def reset(self, row):
            return Observation(row["prompt_ids"])

        def step(self, ids, text):
            raise RuntimeError("the tool server is down")

    t = take_turn(Trajectory.start([1], Budget(max_turns=3)), Broken(), [2], [-1.0], "x", 0)
    assert t.finish_reason == "env_error" and "tool server is down" in t.error and t.token_ids() == [1, 2]


# -- packing for the learner ----------------------------------------------------------------------------------

def scored_groups() -> list[ScoredGroup]:
    """Two prompts of different lengths, three completions each of different lengths and finishes."""
    g = torch.Generator().manual_seed(0)

    def comp(n: int, finish: str = "stop") -> Completion:
        return Completion("t" * n, torch.randint(5, 90, (n,), generator=g).tolist(),
                          (-torch.rand(n, generator=g) * 3).tolist(), finish)

    groups = [Group("p0", [1, 2, 3], [comp(4), comp(7, "length"), comp(1)]),
              Group("p1", [4, 5, 6, 7, 8], [comp(2), comp(5), comp(7, "length")])]
    rewards = [[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]]
    return [ScoredGroup({"question": f"q{i}"}, grp, [Score(r) for r in rs])
            for i, (grp, rs) in enumerate(zip(groups, rewards))]


def completion_layout(scored: list[ScoredGroup]) -> tuple[torch.Tensor, ...]:
    """The one-turn layout written out directly (how batches were packed before episodes): each row the
    prompt then the completion, right-padded with 0; the mask and the engine's log-probs on the
    completion's target columns (len(prompt) - 1 onwards)."""
    seqs = [(sg.group.prompt_ids, c) for sg in scored for c in sg.group.completions]
    L = max(len(p) + len(c.token_ids) for p, c in seqs)
    ids, attn = torch.zeros((len(seqs), L), dtype=torch.long), torch.zeros((len(seqs), L), dtype=torch.long)
    mask, elp = torch.zeros((len(seqs), L - 1)), torch.zeros((len(seqs), L - 1))
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c.token_ids)] = torch.tensor(p + c.token_ids)
        attn[i, : len(p) + len(c.token_ids)] = 1
        mask[i, len(p) - 1 : len(p) - 1 + len(c.token_ids)] = 1.0
        elp[i, len(p) - 1 : len(p) - 1 + len(c.token_ids)] = torch.tensor(c.logprobs)
    return ids, attn, mask, elp


@pytest.mark.parametrize("algo", [AlgorithmConfig(), AlgorithmConfig(overlong_buffer_frac=0.5, overlong_filter=True)],
                         ids=["plain", "dapo-overlong"])
def test_one_turn_episodes_pack_as_prompt_plus_completion(algo):
    """build_batch on groups of plain completions and build_episode_batch on their one-turn episodes give
    the completion layout, tensor for tensor (dtypes included)."""
    scored = scored_groups()
    ids, attn, mask, elp = completion_layout(scored)
    old, old_in = build_batch(scored, pad_id=0, algo=algo, max_tokens=7)
    groups = [[one_turn(sg.group.prompt_ids, c.token_ids, c.logprobs, c.finish_reason, max_tokens=7)
               for c in sg.group.completions] for sg in scored]
    new, new_in = build_episode_batch(groups, [[s.reward for s in sg.scores] for sg in scored], 0, algo, 7)
    if algo.overlong_filter:  # the two truncated completions carry no loss, and the penalty moved rewards
        mask[[1, 5]] = 0.0
        assert not torch.equal(new_in.rewards, torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0]))
    for batch, inp in ((old, old_in), (new, new_in)):
        for name, want in (("input_ids", ids), ("attention_mask", attn), ("response_mask", mask), ("engine_logp", elp),
                           ("advantages", torch.zeros_like(mask)), ("prompt_lens", torch.tensor([3, 3, 3, 5, 5, 5])),
                           ("group_ids", torch.tensor([0, 0, 0, 1, 1, 1]))):
            got = getattr(batch, name)
            assert got.dtype == want.dtype and torch.equal(got, want), name
        assert inp.mask is batch.response_mask
    assert torch.equal(old_in.rewards, new_in.rewards) and torch.equal(old_in.group_ids, new_in.group_ids)


def two_episodes() -> tuple[RLBatch, torch.Tensor]:
    """One group of two episodes on the prompt [1 2 3]:

    episode 0 (reward 1): P P P M M E E M   (turn 0: 2 tokens, observation: 2, turn 1: 1)  length 8
    episode 1 (reward 0): P P P M           (one turn, the environment ends it)            length 4

    Target columns (T = 7; column t describes token t + 1):
    episode 0: P P M M E E M -> mask 0 0 1 1 0 0 1
    episode 1: P P M . . . . -> mask 0 0 1 0 0 0 0   (columns 3..6 are padding)"""
    b = Budget(max_turns=2, max_turn_tokens=4)
    e0 = append_turn(Trajectory.start([1, 2, 3], b), [10, 11], [-0.1, -0.2], 0)
    e0 = record_step(e0, [50, 51], False)
    e0 = record_step(append_turn(e0, [12], [-0.3], 0), None, True)
    e1 = record_step(append_turn(Trajectory.start([1, 2, 3], b), [20], [-0.4], 0), None, True)
    batch, adv_in = build_episode_batch([[e0, e1]], [[1.0, 0.0]], pad_id=0, algo=AlgorithmConfig(), max_tokens=4)
    # grpo without the std: A = r - mean = +0.5 and -0.5, broadcast over each episode's mask
    batch.advantages = ADVANTAGES["grpo"](adv_in, AlgorithmConfig(scale_std=False))
    return batch, adv_in.mask


MODEL_0, ENV_0, MODEL_1, PAD_1 = [2, 3, 6], [4, 5], [2], [3, 4, 5, 6]


def test_multi_turn_batch_masks_environment_tokens():
    batch, mask = two_episodes()
    assert batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 50, 51, 12], [1, 2, 3, 20, 0, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0]]
    assert torch.allclose(batch.engine_logp, torch.tensor([[0, 0, -0.1, -0.2, 0, 0, -0.3], [0, 0, -0.4, 0, 0, 0, 0]]))
    # the episode's advantage is spread over its model tokens only
    assert batch.advantages.tolist() == [[0, 0, 0.5, 0.5, 0, 0, 0.5], [0, 0, -0.5, 0, 0, 0, 0]]
    assert batch.prompt_lens.tolist() == [3, 3] and group_spans(batch) == [(0, 2)]  # shared-prefix forward applies


# Hand-derived gradients of the ppo_clip objective at logp = old_logp (ratio 1, nothing clipped): the per-token
# loss is -r*A with dr/dlogp = r = 1, so d loss / d logp[b, t] = -A_b * w_bt * m_bt, where w is the
# aggregation's weight of a masked token. Masked tokens: 3 in episode 0 (A = +0.5), 1 in episode 1 (A = -0.5),
# B = 2 rows, T = 7 columns.
#   token-mean               w = 1 / sum(m) = 1/4           -> episode 0: -0.5/4 = -0.125     episode 1: +0.125
#   seq-mean-token-mean      w = 1 / (B * n_b)              -> episode 0: -0.5/(2*3) = -1/12  episode 1: +0.5/(2*1) = +0.25
#   seq-mean-token-sum       w = 1 / B                      -> episode 0: -0.5/2 = -0.25      episode 1: +0.25
#   seq-mean-token-sum-norm  w = 1 / (B * T), T = 7         -> episode 0: -0.5/14 = -1/28     episode 1: +1/28
# Environment-token and padding positions: 0 in every mode.
@pytest.mark.parametrize("mode, g0, g1", [("token-mean", -0.125, 0.125),
                                          ("seq-mean-token-mean", -1 / 12, 0.25),
                                          ("seq-mean-token-sum", -0.25, 0.25),
                                          ("seq-mean-token-sum-norm", -1 / 28, 1 / 28)])
@pytest.mark.parametrize("loss", ["ppo_clip", "reinforce"])  # reinforce: -A*logp, the same gradient here
def test_environment_tokens_get_zero_gradient(mode, g0, g1, loss):
    batch, mask = two_episodes()
    logp = (-torch.rand(2, 7, generator=torch.Generator().manual_seed(1)) * 4).requires_grad_()  # [B, T]
    inp = LossInputs(logp, logp.detach(), batch.advantages, mask)
    objective, _ = policy_objective(inp, AlgorithmConfig(loss_agg=mode, policy_loss=loss))
    objective.backward()
    expected = torch.zeros(2, 7)
    expected[0, MODEL_0], expected[1, MODEL_1] = g0, g1
    torch.testing.assert_close(logp.grad, expected, rtol=1e-6, atol=0)
    assert (logp.grad[0, ENV_0] == 0).all() and (logp.grad[1, PAD_1] == 0).all()  # exactly zero


def test_an_environment_token_with_an_advantage_still_gets_no_gradient():
    """Even a (wrong) advantage on an environment token is masked out by the loss."""
    batch, mask = two_episodes()
    logp = torch.zeros(2, 7, requires_grad=True)
    objective, _ = policy_objective(LossInputs(logp, logp.detach(), torch.ones(2, 7) * 3.0, mask), AlgorithmConfig())
    objective.backward()
    assert (logp.grad[0, ENV_0] == 0).all() and (logp.grad[1, PAD_1] == 0).all() and (logp.grad[0, MODEL_0] != 0).all()


def test_failed_and_unfinished_episodes():
    ok = one_turn([1, 2], [3], [-1.0], "stop")
    broken = fail(append_turn(Trajectory.start([1, 2], Budget(max_turns=2)), [4], [-1.0], 0), "ValueError: x")
    other = one_turn([1, 2], [5], [-1.0], "stop")
    batch, inp = build_episode_batch([[ok, broken, other]], torch.tensor([1.0, 0.0, 0.0]), 0, AlgorithmConfig(), 4)
    assert batch.response_mask.tolist() == [[0, 1], [0, 0], [0, 1]]  # env_error: no loss
    assert inp.valid.tolist() == [True, False, True]  # and no place in the group's baseline
    adv = ADVANTAGES["dr_grpo"](inp, AlgorithmConfig())
    assert adv[:, 1].tolist() == [0.5, 0.0, -0.5]  # the mean of {1, 0}, not of {1, 0, 0}
    batch, inp = build_episode_batch([[ok, broken]], torch.tensor([1.0, 0.0]), 0, AlgorithmConfig(), 4)
    assert batch.response_mask.tolist() == [[0, 0], [0, 0]]  # one valid episode left: the group is dropped
    assert inp.valid.tolist() == [False, False]
    with pytest.raises(ValueError, match="has not finished"):
        build_episode_batch([[Trajectory.start([1, 2])]], [[0.0]], 0, AlgorithmConfig(), 4)
    with pytest.raises(ValueError, match="rewards"):
        build_episode_batch([[ok]], [[1.0, 2.0]], 0, AlgorithmConfig(), 4)


def test_segments_are_typed():
    t = three_turns()
    assert [type(s) for s in t.segments] == [ModelSegment, EnvSegment, ModelSegment, EnvSegment, ModelSegment]


def test_a_scored_group_of_episodes_round_trips_through_a_checkpoints_json():
    """Rollouts drawn ahead (async) are checkpointed as JSON: a group of multi-turn episodes comes back
    equal, and a group saved before episodes existed still loads (as plain completions)."""
    from rlvr.scoring import EpisodeGroup, episode_completion

    b = Budget(max_turns=2, max_turn_tokens=4)
    t = append_turn(Trajectory.start([1, 2, 3], b), [10, 11], [-0.1, -0.2], 0, "stop", "ab")
    t = record_step(t, [20, 21], False, {"guesses": 1}, "\nlower\n")
    t = record_step(append_turn(t, [12], [-0.3], 1, "stop", "c"), None, True, {"solved": True})
    group = EpisodeGroup("p", [1, 2, 3], [episode_completion(t)], [t])
    sg = ScoredGroup({"question": "q"}, group, [Score(1.0, True)])
    back = ScoredGroup.from_json(json.loads(json.dumps(sg.to_json())))
    assert isinstance(back.group, EpisodeGroup) and back.group.episodes == [t] and back == sg
    assert back.group.completions[0].text == "ab\nlower\nc" and back.group.completions[0].token_ids == [10, 11, 20, 21, 12]
    old = sg.to_json()
    del old["group"]["episodes"]
    legacy = ScoredGroup.from_json(old)
    assert not isinstance(legacy.group, EpisodeGroup) and legacy.group.completions == group.completions

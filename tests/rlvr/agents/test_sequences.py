"""A session's calls as exact training sequences, from hand-built call records (rlvr.agents.sequences),
and how a sample of several sequences is packed and counted (rlvr.train.batch)."""

from __future__ import annotations

import torch

from rlvr.agents.sequences import session_sequences
from rlvr.algorithms import ADVANTAGES, AlgorithmConfig
from rlvr.envs.trajectory import Source
from rlvr.pipeline import ScoredGroup
from rlvr.scoring import EpisodeGroup
from rlvr.serve import Call, Sample
from rlvr.train.batch import build_batch
from rollouts import Completion
from verifiers import Score

EOS = 0


def call(prompt: list[int], *samples: list[int]) -> Call:
    return Call("s", "completions", prompt, [Sample(ids, [-0.1 * (k + 1)] * len(ids), "stop", f"t{k}")
                                              for k, ids in enumerate(samples)], 0, {})


def test_sent_back_history_chains_into_one_sequence():
    calls = [call([1, 2], [3, 4]),                 # turn 0
             call([1, 2, 3, 4, 9, 9], [5, EOS]),    # the tool's output [9, 9], then turn 1 ending at EOS
             call([1, 2, 3, 4, 9, 9, 5, 8], [6])]   # the agent continued without the EOS: it is dropped
    (seq,) = session_sequences(calls, version=3, end_ids={EOS})
    assert seq.token_ids() == [1, 2, 3, 4, 9, 9, 5, 8, 6]
    assert seq.sources() == [Source.PROMPT] * 2 + [Source.MODEL] * 2 + [Source.ENV] * 2 + [Source.MODEL, Source.ENV,
                                                                                          Source.MODEL]
    assert seq.loss_mask() == [0, 0, 1, 1, 0, 0, 1, 0, 1]
    assert seq.engine_logprobs()[2:4] == [-0.1, -0.1] and seq.versions()[2] == 3 and seq.turns == 3
    assert seq.finish_reason == "stop"


def test_edited_history_splits_the_session_and_each_token_is_trained_once():
    calls = [call([1, 2], [3, 4]),
             call([1, 2, 7, 9], [5]),        # history edited ([3, 4] replaced): a new sequence on this prompt
             call([1, 2, 7, 9, 5, 6], [8]),  # continues the second
             call([1, 2, 3, 4], [4, 4])]     # continues the first (a retry of it would start its own)
    seqs = session_sequences(calls)
    assert [s.token_ids() for s in seqs] == [[1, 2, 7, 9, 5, 6, 8], [1, 2, 3, 4, 4, 4]]  # final call's last
    assert [s.prompt_ids for s in seqs] == [(1, 2, 7, 9), (1, 2)]
    sampled = sorted(t for s in seqs for t, m in zip(s.token_ids(), s.loss_mask()) if m)
    assert sampled == sorted([3, 4, 5, 8, 4, 4])  # every sampled token once, nothing else
    retry = session_sequences(calls[:1] + [call([1, 2, 3, 4], [5]), call([1, 2, 3, 4], [6])])
    assert [s.token_ids() for s in retry] == [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]]
    assert [s.loss_mask() for s in retry] == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]


def test_extra_choices_are_sequences_on_the_calls_prompt():
    seqs = session_sequences([call([1], [2], [3]), call([1, 2, 5], [6])])
    assert [s.token_ids() for s in seqs] == [[1, 3], [1, 2, 5, 6]]
    assert session_sequences([]) == []


def _group(samples: list[list], rewards: list[float]) -> ScoredGroup:
    episodes = [seqs[-1] for seqs in samples]
    comps = [Completion("", [], [], "stop") for _ in samples]
    group = EpisodeGroup("p", [1, 2], comps, episodes, samples)
    return ScoredGroup({}, group, [Score(r, r > 0) for r in rewards])


def test_a_sample_of_several_sequences_counts_once_in_its_baseline():
    one = session_sequences([call([1, 2], [3])])
    split = session_sequences([call([1, 2], [3]), call([1, 2, 7], [4])])
    assert len(split) == 2
    sg = _group([split, one, one], [1.0, 0.0, 0.0])
    batch, inp = build_batch([sg], pad_id=0, algo=AlgorithmConfig(), max_tokens=8)
    assert batch.input_ids.shape[0] == 4 and inp.lead.tolist() == [True, False, True, True]
    assert inp.rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
    adv = ADVANTAGES["dr_grpo"](inp, AlgorithmConfig(advantage="dr_grpo"))
    per_row = adv.sum(1) / batch.response_mask.sum(1)  # [4] the advantage on each row's model tokens
    # the mean over the three samples (not the four rows) is 1/3; both rows of the split sample get 1 - 1/3
    assert torch.allclose(per_row, torch.tensor([2 / 3, 2 / 3, -1 / 3, -1 / 3]))
    # a failed sample with several rows: none of its rows train, and the group of three samples keeps two
    sg.scores[0] = Score(0.0, None, {}, "env_error: agent_raised", outcome="infra_error")
    batch, inp = build_batch([sg], pad_id=0, algo=AlgorithmConfig(), max_tokens=8)
    assert inp.valid.tolist() == [False, False, True, True] and batch.response_mask[:2].sum() == 0

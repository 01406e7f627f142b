"""Learner micro-batching: rows sorted by length and cut to their own width give the same
update as one full-width batch, in every aggregation mode and over several passes."""

from __future__ import annotations

import copy

import pytest
import torch

from rlvr.algorithms import AlgorithmConfig
from rlvr.learner import Learner, RLBatch, token_logp_and_entropy


def ragged_batch(model, seed: int = 0) -> RLBatch:
    g = torch.Generator().manual_seed(seed)
    B, L = 10, 24
    lengths = torch.randint(8, L + 1, (B,), generator=g)
    ids = torch.zeros(B, L, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L - 1)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(3, 300, (n,), generator=g)
        attn[i, :n] = 1
        mask[i, 4 : n - 1] = 1.0  # response = positions after a 5-token prompt
    adv = torch.randn(B, 1, generator=g).expand(B, L - 1) * mask
    with torch.no_grad():
        logp, _ = token_logp_and_entropy(model, ids, attn)
    engine = (logp + 0.01 * torch.randn(logp.shape, generator=g)) * mask
    return RLBatch(ids, attn, mask, adv.contiguous(), engine)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_sorted_trimmed_micro_batches_match_one_full_batch(micro_model, agg):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    batch = ragged_batch(base)
    algo = AlgorithmConfig(loss_agg=agg, is_cap=2.0)
    results = []
    for micro in (len(batch), 3):
        model = copy.deepcopy(base)
        learner = Learner(model, algo, lr=1e-3, micro_batch_size=micro, updates_per_batch=2)
        # plain SGD: the update is the gradient itself (Adam's first step is ~lr*sign(g), which
        # would turn float noise in near-zero gradients into lr-sized differences)
        learner.opt = torch.optim.SGD(model.parameters(), lr=0.05)
        metrics = learner.step(batch)
        results.append((model, metrics))
    (full, m_full), (small, m_small) = results
    for (name, a), (_, b) in zip(full.named_parameters(), small.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    for key in ("logp_diff_mean", "logp_diff_max", "engine_ratio_min", "engine_ratio_max", "grad_norm"):
        assert m_full[key] == pytest.approx(m_small[key], rel=1e-4, abs=1e-6), key
    assert m_full["logp_diff_max"] > 0.005  # the engine log-probs were perturbed: the gap is seen, row by row

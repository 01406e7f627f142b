"""Learner micro-batching: rows sorted by length and cut to their own width give the same
update as one full-width batch, in every aggregation mode and over several passes; the
shared-prefix forward (each group's prompt run once) gives the flat forward's log-probs,
entropies and update."""

from __future__ import annotations

import copy

import pytest
import torch

from rlvr.algorithms import AlgorithmConfig
from rlvr.config import OptimConfig, TrainLoopConfig
from rlvr.train.learner import Learner, RLBatch, group_spans, shared_prefix_logp_and_entropy, token_logp_and_entropy


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
        learner = Learner(model, algo, OptimConfig(lr=1e-3), TrainLoopConfig(micro_batch_size=micro, updates_per_batch=2))
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


AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def grouped_batch(model, seed: int = 0, groups: int = 4, n: int = 3) -> RLBatch:
    """Groups of ``n`` rows sharing a prompt; prompt lengths differ between groups, completion
    lengths within them (one completion of a single token), rows right-padded as build_batch does."""
    g = torch.Generator().manual_seed(seed)
    rows, prompt_lens = [], []
    for k in range(groups):
        prompt = torch.randint(3, 300, (int(torch.randint(3, 14, (1,), generator=g)),), generator=g)
        for j in range(n):
            c = 1 if (k, j) == (1, 2) else int(torch.randint(2, 16, (1,), generator=g))
            rows.append(torch.cat([prompt, torch.randint(3, 300, (c,), generator=g)]))
            prompt_lens.append(len(prompt))
    B, L = len(rows), max(map(len, rows))
    ids = torch.ones(B, L, dtype=torch.long)  # pad id 1, as the tiny tokenizer's
    attn = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L - 1)
    for i, (row, p) in enumerate(zip(rows, prompt_lens)):
        ids[i, : len(row)], attn[i, : len(row)] = row, 1
        mask[i, p - 1 : len(row) - 1] = 1.0  # target alignment: completion tokens are targets p-1 onwards
    adv = torch.randn(groups, 1, generator=g).repeat_interleave(n, 0).expand(B, L - 1) * mask
    adv = adv + 0.3 * torch.randn(B, 1, generator=g) * mask  # rows of a group differ too
    with torch.no_grad():
        logp, _ = token_logp_and_entropy(model, ids, attn)
    engine = (logp + 0.01 * torch.randn(logp.shape, generator=g)) * mask
    return RLBatch(ids, attn, mask, adv.contiguous(), engine, torch.tensor(prompt_lens),
                   torch.arange(groups).repeat_interleave(n))


@pytest.fixture(scope="module")
def micro_base(micro_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)


def test_shared_prefix_logp_and_entropy_equal_flat(micro_base):
    batch = grouped_batch(micro_base)
    with torch.no_grad():
        flat_lp, flat_ent = token_logp_and_entropy(micro_base, batch.input_ids, batch.attention_mask)
        runs = [shared_prefix_logp_and_entropy(micro_base, batch.input_ids, batch.attention_mask,
                                               batch.prompt_lens, batch.group_ids, completion_chunks=k)
                for k in (1, 3, 12)]
    on = batch.response_mask > 0
    assert len(set(batch.prompt_lens.tolist())) > 2
    for lp, ent in runs:
        assert lp.shape == flat_lp.shape
        torch.testing.assert_close(lp[on], flat_lp[on], rtol=1e-5, atol=5e-5)
        torch.testing.assert_close(ent[on], flat_ent[on], rtol=1e-5, atol=5e-5)
        assert not lp[~on].any() and not ent[~on].any()  # prompt targets and padding: 0


def test_shared_prefix_gradient_reaches_every_parameter(micro_base):
    model = copy.deepcopy(micro_base)
    batch = grouped_batch(model)
    lp, ent = shared_prefix_logp_and_entropy(model, batch.input_ids, batch.attention_mask, batch.prompt_lens,
                                             batch.group_ids, completion_chunks=3)
    (lp.sum() + ent.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    # the prompt's keys and values carry gradient: a prompt-only embedding row gets one
    prompt_only = set(batch.input_ids[0, : int(batch.prompt_lens[0])].tolist()) - set(
        batch.input_ids[:, int(batch.prompt_lens.max()) :].flatten().tolist())
    emb = model.get_input_embeddings().weight.grad
    assert prompt_only and all(emb[t].abs().sum() > 0 for t in prompt_only)


@pytest.mark.parametrize("updates", [1, 2])
@pytest.mark.parametrize("agg", AGGS)
def test_shared_prefix_step_matches_flat_step(micro_base, agg, updates):
    batch = grouped_batch(micro_base, seed=updates)
    algo = AlgorithmConfig(loss_agg=agg, is_cap=2.0, entropy_coef=0.01)
    results = []
    for shared in (False, True):
        model = copy.deepcopy(micro_base)
        # micro 7 rows: whole groups of 3 pack two to a micro-batch (the flat path cuts 7-row slices)
        learner = Learner(model, algo, OptimConfig(lr=1e-3), TrainLoopConfig(micro_batch_size=7, updates_per_batch=updates, shared_prefix=shared))
        learner.opt = torch.optim.SGD(model.parameters(), lr=0.05)  # the update is the gradient (see above)
        assert learner.plan(batch, by_length=True)[2] is shared
        results.append((model, learner.step(batch)))
    (flat, m_flat), (shared_model, m_shared) = results
    for (name, a), (_, b) in zip(flat.named_parameters(), shared_model.named_parameters()):
        assert not torch.equal(a, micro_base.get_parameter(name)), name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # (loss and entropy are means of per-micro-batch values: they depend on how rows are grouped)
    for key in ("logp_diff_mean", "logp_diff_max", "engine_ratio_min", "engine_ratio_max", "grad_norm"):
        assert m_flat[key] == pytest.approx(m_shared[key], rel=1e-4, abs=1e-6), key


def test_shared_prefix_with_reference_kl(micro_base):
    """KL in the loss (reference forward per micro-batch) and KL in the reward (policy_and_reference_logp)."""
    ref = copy.deepcopy(micro_base).requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = grouped_batch(micro_base, seed=3, groups=3, n=4)
    algo = AlgorithmConfig(kl_coef=0.1, kl_kind="k3")
    models, kl_inputs = [], []
    for shared in (False, True):
        model = copy.deepcopy(micro_base)
        learner = Learner(model, algo, OptimConfig(lr=1e-3), TrainLoopConfig(micro_batch_size=5, shared_prefix=shared), ref_model=ref)
        learner.opt = torch.optim.SGD(model.parameters(), lr=0.05)
        kl_inputs.append(learner.policy_and_reference_logp(batch))
        m = learner.step(batch)
        assert m["kl"] > 0
        models.append(model)
    for a, b in zip(*kl_inputs):  # log-probs of size ~5: two forward orders round apart by ~1e-5 on AVX-512
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-5)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_shared_prefix_falls_back_to_flat_without_usable_groups(micro_base):
    batch = grouped_batch(micro_base)
    learner = Learner(copy.deepcopy(micro_base), AlgorithmConfig(), OptimConfig(lr=1e-3), TrainLoopConfig(micro_batch_size=4))
    order, bounds, shared = learner.plan(batch, by_length=True)
    assert shared and all((b - a) % 3 == 0 for a, b in bounds)  # whole groups (3 rows each), 3 <= 4 rows
    assert group_spans(batch) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    no_groups = RLBatch(batch.input_ids, batch.attention_mask, batch.response_mask, batch.advantages, batch.engine_logp)
    split = batch.select(torch.tensor([0, 3, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]))  # group 0 not in adjacent rows
    other_prompt = batch.select(torch.arange(12))
    other_prompt.input_ids = other_prompt.input_ids.clone()
    other_prompt.input_ids[1, 0] += 1  # row 1's prompt differs from its group's
    unequal = batch.select(torch.arange(12))
    unequal.prompt_lens = unequal.prompt_lens.clone()
    unequal.prompt_lens[2] -= 1
    singletons = batch.select(torch.arange(12))
    singletons.group_ids = torch.arange(12)
    for b in (no_groups, split, other_prompt, unequal, singletons):
        assert learner.plan(b, by_length=True)[2] is False
    assert Learner(learner.model, AlgorithmConfig(), OptimConfig(lr=1e-3), TrainLoopConfig(shared_prefix=False)).plan(batch, True)[2] is False

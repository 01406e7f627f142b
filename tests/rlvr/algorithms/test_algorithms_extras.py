"""DAPO extras, the PPO critic (value loss, value model) and presets/config."""

from __future__ import annotations

import pytest
import torch

from rlvr.algorithms import (
    ADVANTAGES,
    POLICY_LOSSES,
    PRESETS,
    AlgorithmConfig,
    CriticModel,
    dynamic_sampling_filter,
    overlong_mask,
    resolve_algorithm,
    soft_overlong_penalty,
    value_loss,
)

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b if isinstance(b, torch.Tensor) else t(b), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------- DAPO


def test_dynamic_sampling_filter_drops_all_equal_groups():
    # g0 {1, 1} all equal: drop. g1 {0, 1}: keep. g2 {.5, .5}: drop. g3 {3} (one sample): drop.
    rewards = t([1.0, 0.0, 1.0, 0.5, 1.0, 0.5, 3.0])
    groups = torch.tensor([0, 1, 0, 2, 1, 2, 3])
    keep = dynamic_sampling_filter(rewards, groups)
    assert keep.tolist() == [False, True, False, False, True, False, False]
    assert dynamic_sampling_filter(t([]), torch.tensor([], dtype=torch.long)).tolist() == []


def test_dynamic_sampling_filter_matches_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        B = int(torch.randint(1, 12, (1,), generator=g))
        groups = torch.randint(0, 4, (B,), generator=g)
        rewards = torch.randint(0, 2, (B,), generator=g).to(F64)
        want = [len({rewards[j].item() for j in range(B) if groups[j] == groups[i]}) > 1 for i in range(B)]
        assert dynamic_sampling_filter(rewards, groups).tolist() == want


def test_overlong_mask():
    assert overlong_mask(["stop", "length", None, "stop"]).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert overlong_mask([True, False]).tolist() == [0.0, 1.0]
    assert overlong_mask(torch.tensor([False, True])).tolist() == [1.0, 0.0]


def test_soft_overlong_penalty_hand_derived():
    # max_len 20, cache 4: free up to 16 tokens, then -(L - 16)/4, -1 at 20 and beyond.
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    close(soft_overlong_penalty(lengths, 20, 4).to(F64), t([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    close(soft_overlong_penalty(lengths, 20, 4, factor=0.5).to(F64), t([0.0, 0.0, -0.125, -0.25, -0.5, -0.5]))
    close(soft_overlong_penalty(lengths, 20, 0).to(F64), t([0.0] * 6))


# ------------------------------------------------------------------------------------ critic


def test_value_loss_clipped_hand_derived():
    # eps .1, loss_t = 1/2 max((V-R)^2, (Vclip-R)^2), Vclip = Vold + clip(V-Vold, +-.1):
    #   t0 V 1.0 Vold .8 R 1.5: (V-R)^2 .25, Vclip .9 -> .36   -> .18  (clipped branch)
    #   t1 V 2.0 Vold 2.5 R 1.0: 1.0,       Vclip 2.4 -> 1.96  -> .98  (clipped branch)
    #   t2 V .5  Vold .5  R 0.0: .25,       Vclip .5  -> .25   -> .125
    #   token-mean = 1.285 / 3
    values = t([[1.0, 2.0, 0.5]]).requires_grad_()
    old, ret, mask = t([[0.8, 2.5, 0.5]]), t([[1.5, 1.0, 0.0]]), t([[1.0, 1.0, 1.0]])
    loss, m = value_loss(values, old, ret, mask, clip_eps=0.1)
    close(loss, t(1.285 / 3))
    close(m["vf_clip_frac"], t(2 / 3))
    # The clipped branches are constant in V: only t2 has a gradient, (V - R)/3 = .5/3.
    loss.backward()
    close(values.grad, t([[0.0, 0.0, 0.5 / 3]]))
    # Unclipped: 1/2 * (.25 + 1 + .25) / 3 = .25.
    close(value_loss(values, old, ret, mask, clip_eps=None)[0], t(0.25))
    # seq-mean-token-sum over one row: the sum 1.285.
    close(value_loss(values, old, ret, mask, 0.1, agg="seq-mean-token-sum")[0], t(1.285))


def test_value_loss_matches_formula_on_random_inputs():
    g = torch.Generator().manual_seed(3)
    for eps in (0.05, 0.2, 1.0):
        v, vo, r = (torch.randn(4, 6, generator=g, dtype=F64) for _ in range(3))
        mask = (torch.rand(4, 6, generator=g) > 0.3).to(F64)
        want, n = 0.0, 0
        for b in range(4):
            for k in range(6):
                if mask[b, k]:
                    vc = vo[b, k] + min(max((v[b, k] - vo[b, k]).item(), -eps), eps)
                    want += 0.5 * max((v[b, k] - r[b, k]).item() ** 2, (vc - r[b, k]).item() ** 2)
                    n += 1
        close(value_loss(v, vo, r, mask, eps)[0], t(want / n))


def tiny_policy():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )
    return AutoModelForCausalLM.from_config(cfg)


def test_critic_model_copies_backbone_and_trains_its_head():
    policy = tiny_policy()
    critic = CriticModel.from_policy(policy)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    values = critic(ids, attn)
    assert values.shape == (2, 4)
    assert torch.all(values == 0)  # zero-initialised head
    # The backbone is a copy: training the critic leaves the policy unchanged.
    before = {k: p.detach().clone() for k, p in policy.named_parameters()}
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    for _ in range(2):
        loss, _ = value_loss(critic(ids, attn), torch.zeros(2, 4), torch.ones(2, 4), attn.float(), clip_eps=None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert critic(ids, attn).abs().sum() > 0
    assert all(torch.equal(before[k], p) for k, p in policy.named_parameters())
    assert not any(n.startswith("lm_head") for n, _ in critic.named_parameters())


def test_critic_model_from_pretrained(tmp_path):
    tiny_policy().save_pretrained(tmp_path)
    critic = CriticModel.from_pretrained(str(tmp_path))
    assert critic(torch.tensor([[1, 2, 3]])).shape == (1, 3)


# ----------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_to_registered_pieces(name):
    cfg = resolve_algorithm(name)
    assert cfg.advantage in ADVANTAGES and cfg.policy_loss in POLICY_LOSSES


def test_preset_choices():
    assert set(PRESETS) == {"grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo"}
    assert resolve_algorithm("ppo").needs_critic and not resolve_algorithm("grpo").needs_critic
    assert resolve_algorithm("grpo").needs_reference and not resolve_algorithm("dapo").needs_reference
    dapo = resolve_algorithm("dapo")
    got = (dapo.clip_eps_low, dapo.clip_eps_high, dapo.loss_agg, dapo.dynamic_sampling)
    assert got == (0.2, 0.28, "token-mean", True)
    assert resolve_algorithm("dr_grpo", max_response_len=512).loss_agg_norm == 512.0
    assert resolve_algorithm("dr_grpo", {"loss_agg_norm": 100}, max_response_len=512).loss_agg_norm == 100.0
    assert resolve_algorithm("grpo", max_response_len=512).loss_agg_norm is None


def test_preset_overrides_and_errors():
    cfg = resolve_algorithm("dapo", {"clip_eps_high": 0.3, "dual_clip_c": 3.0})
    assert (cfg.clip_eps_high, cfg.dual_clip_c, cfg.dynamic_sampling) == (0.3, 3.0, True)
    assert resolve_algorithm("ppo", {"advantage": "grpo"}).advantage == "grpo"  # kl_coef 0: allowed
    with pytest.raises(ValueError, match="clip_eps_hgh"):
        resolve_algorithm("dapo", {"clip_eps_hgh": 0.3})
    with pytest.raises(ValueError, match="unknown algorithm"):
        resolve_algorithm("trpo")
    with pytest.raises(ValueError, match="advantage"):
        AlgorithmConfig(advantage="gea")
    with pytest.raises(ValueError, match="policy_loss"):
        AlgorithmConfig(policy_loss="ppo")
    with pytest.raises(ValueError, match="dual_clip_c"):
        AlgorithmConfig(dual_clip_c=0.5)


def test_preset_field_and_bare_string_in_a_run_config():
    from pydantic import BaseModel

    class Run(BaseModel):  # how a run config nests it: `algorithm: dapo` or a mapping
        algorithm: AlgorithmConfig = AlgorithmConfig()

    assert Run.model_validate({"algorithm": "dapo"}).algorithm == resolve_algorithm("dapo")
    cfg = Run.model_validate({"algorithm": {"preset": "gspo", "clip_eps_high": 1e-3}}).algorithm
    assert (cfg.policy_loss, cfg.clip_eps_low, cfg.clip_eps_high) == ("gspo", 3e-4, 1e-3)
    assert AlgorithmConfig(**cfg.model_dump()) == cfg  # dumps round-trip
    assert AlgorithmConfig().preset is None and AlgorithmConfig().loss_agg == "token-mean"


def test_every_config_field_is_described():
    for name, field in AlgorithmConfig.model_fields.items():
        assert field.description, name

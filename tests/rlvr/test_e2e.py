"""End to end on real parts: micro base model (pretrained here), HF engine, real verifiers."""

import json

import torch

from rlvr.config import TrainConfig, load_config
from rlvr.logging import read_metrics
from rlvr.loop import train


def test_rl_steps_change_parameters_and_write_metrics(micro_model, tmp_path, tiny_cfg):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    cfg = tiny_cfg("train.steps=3", "eval.every=2", "optim.lr=1e-3", "logging.tensorboard=true",
                   model=micro_model, run_dir=run_dir)
    summary = train(cfg)

    records = read_metrics(run_dir / "metrics.jsonl")
    train_recs = [r for r in records if r["kind"] == "train"]
    eval_recs = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_recs] == [1, 2, 3]
    assert [r["step"] for r in eval_recs] == [0, 2, 3]
    for key in ("reward_mean", "accuracy", "format_rate", "response_len_mean", "response_len_max", "entropy",
                "clip_frac", "generate_s", "score_s", "learn_s", "sync_s", "logp_diff_max", "grad_norm"):
        assert all(key in r and r[key] == r[key] for r in train_recs), key
    # HF engine and learner run the same float32 weights: log-probs agree
    assert max(r["logp_diff_max"] for r in train_recs) < 1e-3
    assert {"pass@1", "pass@2", "format_rate"} <= set(eval_recs[0])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "reward_accuracy.png").stat().st_size > 1000
    assert json.loads((run_dir / "summary.json").read_text())["after"] == summary["after"]

    base = AutoModelForCausalLM.from_pretrained(micro_model)
    final = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    changed = [n for (n, a), (_, b) in zip(base.named_parameters(), final.named_parameters()) if not torch.equal(a, b)]
    assert len(changed) > 0


def test_learner_step_moves_logprob_towards_positive_advantage(micro_model):
    """A GRPO step raises the advantage-weighted log-prob of the batch (the surrogate it ascends).

    One Adam step moves every parameter by about ``lr``, so it guarantees only that the
    objective improves to first order, not that each row's log-prob moves its own way: the two
    rows share a prefix and tokens, and on AVX-512 the rewarded row's log-prob fell too."""
    from transformers import AutoModelForCausalLM

    from rlvr.algorithms import AlgorithmConfig
    from rlvr.config import OptimConfig, TrainLoopConfig
    from rlvr.train.learner import Learner, RLBatch, token_logp_and_entropy

    model = AutoModelForCausalLM.from_pretrained(micro_model)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 10, 11]])
    attn = torch.ones_like(ids)
    mask = torch.tensor([[0, 0, 1.0, 1.0], [0, 0, 1.0, 1.0]])
    adv = torch.tensor([[0, 0, 1.0, 1.0], [0, 0, -1.0, -1.0]])
    with torch.no_grad():
        before, _ = token_logp_and_entropy(model, ids, attn)
    learner = Learner(model, AlgorithmConfig(), OptimConfig(lr=1e-4), TrainLoopConfig(micro_batch_size=1))
    m = learner.step(RLBatch(ids, attn, mask, adv, before * mask))
    with torch.no_grad():
        after, _ = token_logp_and_entropy(model, ids, attn)
    delta = (after - before) * mask  # [2, 4]
    assert float((adv * delta).sum()) > 0  # the surrogate sum_t A_t * logp_t rose
    assert delta[0].sum() > delta[1].sum()  # the rewarded row gained on the penalised one
    assert m["logp_diff_max"] < 1e-5 and m["clip_frac"] == 0.0


def test_parity_probe_stops_a_bfloat16_engine_before_the_first_step(micro_model, tmp_path):
    """A bfloat16 engine samples from other numbers than the float32 learner: the start-up probe names it
    before anything is evaluated or trained."""
    import pytest

    from rlvr.parity import LogprobParityError

    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
        f"model={micro_model}", f"run_dir={tmp_path / 'run'}", "engine.kind=hf", "engine.dtype=bfloat16",
        "engine.max_logprob_diff=0.001", "train.steps=1", "train.prompts_per_step=2", "sampling.n=2",
        "sampling.max_tokens=8", "eval.num_prompts=2", "eval.k=1", "eval.max_tokens=4", "logging.progress=false",
        "logging.tensorboard=false",
    ])
    with pytest.raises(LogprobParityError, match=r"start-up parity probe.*engine\.kind=hf, engine\.dtype=bfloat16"):
        train(cfg)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == []  # no evaluation, no step


def test_parity_probe_catches_a_corrupted_engine_and_passes_a_sound_one(micro_model):
    """Real engine, real learner: the probe passes the engine as built, and stops one whose weights were
    corrupted behind the learner's back (what kernels computing wrong numbers look like from outside)."""
    import pytest
    from transformers import AutoTokenizer

    from rlvr.components import build_rubric, load_rows
    from rlvr.parity import LogprobParityError, probe
    from rlvr.rollout import LocalRollouts
    from rlvr.train.side import build_policy_side

    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [f"model={micro_model}", "engine.kind=hf",
                                                                  "eval.num_prompts=2"])
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    rubric = build_rubric(cfg)
    rows = load_rows(cfg, tokenizer, rubric, micro_model, verbose=False).train
    side = build_policy_side(cfg, micro_model, "cpu")
    rollouts = LocalRollouts(cfg, micro_model, rubric, threads=1)
    try:
        sound = probe(rollouts.generate_and_score, side.learner.policy_logp, rows, cfg, tokenizer.pad_token_id)
        assert sound["probe_logp_diff_max"] < 1e-4
        # the embedding's rows shuffled: every token is read as another one, as a broken kernel would
        embed = dict(side.policy.named_parameters())["model.embed_tokens.weight"].detach()
        rollouts.load_weights([("model.embed_tokens.weight", embed[torch.randperm(len(embed))])])
        with pytest.raises(LogprobParityError, match=r"engine\.kind=hf.*Likely causes"):
            probe(rollouts.generate_and_score, side.learner.policy_logp, rows, cfg, tokenizer.pad_token_id)
    finally:
        rollouts.close()


def test_step_gate_names_the_engine():
    import pytest

    from rlvr.parity import LogprobParityError, check_step

    cfg = TrainConfig(model="m", engine={"kind": "static", "max_logprob_diff": 0.5})
    check_step({"logp_diff_max": 0.4}, cfg)
    with pytest.raises(LogprobParityError, match=r"0\.6 nats > engine\.max_logprob_diff = 0\.5 \(engine\.kind=static"):
        check_step({"logp_diff_max": 0.6}, cfg)

"""Learner precision and memory: bf16 autocast with float32 master weights, gradient
checkpointing, max_seq_len, the engine/learner mismatch KL, and the dtype-dependent gate."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlvr.algorithms import AlgorithmConfig
from rlvr.archs import build_model, micro_config
from rlvr.config import ConfigError, OptimConfig, TrainConfig, TrainLoopConfig
from rlvr.pretrain import local_tokenizer
from rlvr.train.learner import Learner, RLBatch, token_logp_and_entropy


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    tok = local_tokenizer()
    return build_model(micro_config("llama", len(tok)), tok, tmp_path_factory.mktemp("prec") / "llama")


def batch_for(model, seed: int = 0, noise: float = 0.0) -> RLBatch:
    g = torch.Generator().manual_seed(seed)
    B, L = 6, 20
    ids = torch.randint(3, 300, (B, L), generator=g)
    attn = torch.ones(B, L, dtype=torch.long)
    mask = torch.zeros(B, L - 1)
    mask[:, 5:] = 1.0
    adv = torch.randn(B, 1, generator=g).expand(B, L - 1) * mask
    with torch.no_grad():
        logp, _ = token_logp_and_entropy(model, ids, attn)
    engine = (logp + noise * torch.randn(logp.shape, generator=g)) * mask
    return RLBatch(ids, attn, mask, adv.contiguous(), engine)


def load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_bf16_learner_keeps_float32_master_weights_and_state(llama_dir):
    model = load(llama_dir)
    batch = batch_for(model)  # engine log-probs from the float32 model
    learner = Learner(model, AlgorithmConfig(is_cap=2.0), OptimConfig(lr=1e-3), TrainLoopConfig(dtype="bfloat16"))
    with learner.autocast():
        logp, _ = token_logp_and_entropy(model, batch.input_ids, batch.attention_mask)
    assert logp.dtype == torch.float32  # log-softmax on float32 logits
    metrics = learner.step(batch)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = [s for s in learner.opt.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in state)
    # bf16 compute drifts from the float32 engine: seen, measured, and inside the bf16 gate
    assert 0 < metrics["logp_diff_max"] < 8.0
    assert 0 < metrics["mismatch_kl"] < 0.05
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


def test_mismatch_kl_is_k3_of_engine_vs_learner(llama_dir):
    model = load(llama_dir)
    batch = batch_for(model)
    delta = 0.1  # engine log-probs 0.1 nats above the learner's everywhere: r = exp(-0.1)
    batch.engine_logp = (batch.engine_logp + delta) * batch.response_mask
    learner = Learner(model, AlgorithmConfig(), OptimConfig(lr=1e-6))
    metrics = learner.step(batch)
    expected = math.exp(-delta) - 1 + delta
    assert metrics["mismatch_kl"] == pytest.approx(expected, rel=1e-3)
    assert metrics["logp_diff_max"] == pytest.approx(delta, abs=1e-4)


def test_gradient_checkpointing_gives_the_same_update(llama_dir):
    base = load(llama_dir)
    batch = batch_for(base)
    models = []
    for ckpt in (False, True):
        model = copy.deepcopy(base)
        learner = Learner(model, AlgorithmConfig(), OptimConfig(lr=1e-3), TrainLoopConfig(gradient_checkpointing=ckpt, micro_batch_size=3))
        assert learner.shared_prefix is (not ckpt)
        learner.opt = torch.optim.SGD(model.parameters(), lr=0.1)  # the update is the gradient itself
        learner.step(batch)
        models.append(model)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_max_seq_len_refuses_a_longer_row(llama_dir):
    model = load(llama_dir)
    learner = Learner(model, AlgorithmConfig(), OptimConfig(lr=1e-3), TrainLoopConfig(max_seq_len=16))
    with pytest.raises(ValueError, match="train.max_seq_len=16"):
        learner.step(batch_for(model))


def test_max_seq_len_checked_on_prompts_before_models_load(tmp_path):
    from rlvr.run import check_max_seq_len

    cfg = TrainConfig(model=str(tmp_path), train={"max_seq_len": 40}, sampling={"max_tokens": 32})
    with pytest.raises(ConfigError, match=r"longest training prompt has 12 tokens.*reach 44"):
        check_max_seq_len(cfg, [{"prompt_ids": [1] * 12}, {"prompt_ids": [1] * 5}])
    check_max_seq_len(cfg, [{"prompt_ids": [1] * 8}])


def test_gate_and_is_cap_follow_the_dtypes():
    fp32 = TrainConfig(model="m")
    assert fp32.engine.max_logprob_diff == 0.5 and fp32.algorithm.is_cap is None
    for over in ({"engine": {"dtype": "bfloat16"}}, {"train": {"dtype": "bfloat16"}}):
        cfg = TrainConfig(model="m", **over)
        assert cfg.engine.max_logprob_diff == 8.0 and cfg.algorithm.is_cap == 2.0
    explicit = TrainConfig(model="m", engine={"dtype": "bfloat16", "max_logprob_diff": 3.0}, algorithm={"is_cap": 5.0})
    assert explicit.engine.max_logprob_diff == 3.0 and explicit.algorithm.is_cap == 5.0
    assert TrainConfig(model="m", train={"gradient_checkpointing": True}).train.shared_prefix is False


def test_bf16_on_a_cpu_without_bf16_warns_with_the_slowdown():
    from rlvr.precision import check_learner_dtype

    with pytest.warns(UserWarning, match=r"no bf16 instructions.*measured [0-9.]+x the float32 time"):
        check_learner_dtype("bfloat16", "cpu", has_bf16=False)
    assert check_learner_dtype("bfloat16", "cpu", has_bf16=True) is None
    assert check_learner_dtype("float32", "cpu", has_bf16=False) is None


def test_bf16_learner_run_end_to_end(llama_dir, tmp_path):
    """The loop with a bf16 learner and a float32 engine: the gate (bf16 bound) lets it run and
    every step reports the mismatch KL."""
    from rlvr.config import load_config
    from rlvr.logging import read_metrics
    from rlvr.loop import train

    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
        f"model={llama_dir}", f"run_dir={run_dir}", "engine.kind=hf", "train.steps=2", "train.prompts_per_step=2",
        "sampling.n=4", "sampling.max_tokens=12", "eval.every=0", "eval.num_prompts=4", "eval.k=1",
        "eval.max_tokens=8", "train.dtype=bfloat16", "train.gradient_checkpointing=true", "train.max_seq_len=256",
        "logging.progress=false", "logging.tensorboard=false", "train.threads=1",
    ])
    assert cfg.engine.max_logprob_diff == 8.0 and cfg.algorithm.is_cap == 2.0
    train(cfg)
    recs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert len(recs) == 2 and all(r["mismatch_kl"] >= 0 and r["logp_diff_max"] > 0 for r in recs)

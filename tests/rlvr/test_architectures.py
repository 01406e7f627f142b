"""Every popular base architecture on every engine: Llama, Qwen2 (tied and untied head), Qwen3.

Each is a micro random-init model built here from its config (no hub), with the project's
local tokenizer. For each (architecture, engine): perturb the learner's weights, sync them into
the engine, and check that the engine's log-probs of its own samples equal the learner's
recomputation (the parity gate's quantity); then take two RL steps (sample, reward, GRPO
update, sync) and check the gate stays closed and a tied head stays tied. The tied Qwen2 case
is the regression test for vLLM's in-place reload leaving a tied lm_head stale.
"""

from __future__ import annotations

import pytest
import torch

from rlvr.algorithms import ADVANTAGES, AlgorithmConfig
from rlvr.archs import ARCHS, build_model, micro_config
from rlvr.config import OptimConfig, TrainLoopConfig
from rlvr.pipeline import ScoredGroup
from rlvr.pretrain import local_tokenizer
from rlvr.train.batch import build_batch
from rlvr.train.learner import Learner
from rollouts import SamplingConfig, make_engine
from verifiers import Score

PROMPTS = [f"A conversation between User and Assistant.\nUser: Compute {a}+{b}-{c}.\nAssistant: <think>"
           for a, b, c in [(3, 4, 2), (12, 5, 7), (20, 9, 1), (7, 7, 7)]]
PARITY = 5e-4  # float32 engine vs float32 learner, nats (mostly ~1e-5; a rare sampled token reached 1.2e-4 on AVX2)


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory) -> dict[str, str]:
    tokenizer = local_tokenizer()
    root = tmp_path_factory.mktemp("archs")
    return {arch: build_model(micro_config(arch, len(tokenizer)), tokenizer, root / arch) for arch in ARCHS}


def _engine(kind: str, model_dir: str):
    if kind == "vllm":
        pytest.importorskip("vllm")
        return make_engine("vllm", model_dir, dtype="float32", seed=0, kv_cache_gib=0.25)
    if kind == "static":  # eager here: the compiled layer is checked against eager in tests/rollouts
        return make_engine("static", model_dir, compile=False)
    return make_engine("hf", model_dir)


def _scored(groups, rewarded: str = "1") -> list[ScoredGroup]:
    """A deterministic, varying reward: whether the completion mentions ``rewarded``."""
    return [ScoredGroup({}, g, [Score(float(rewarded in c.text), rewarded in c.text) for c in g.completions])
            for g in groups]


def _logp_gap(learner: Learner, groups, pad_id: int) -> float:
    """Largest |engine - learner| log-prob over the sampled tokens."""
    batch, _ = build_batch(_scored(groups), pad_id, learner.algo, max_tokens=64)
    learner.model.eval()
    with torch.no_grad():
        order, bounds, shared = learner.plan(batch, by_length=False)
        logp = torch.cat([learner._forward(learner.model, batch.select(order).slice(a, b), shared)[0] for a, b in bounds])
    logp[order] = logp.clone()
    return float(((logp - batch.engine_logp).abs() * batch.response_mask).max())


@pytest.mark.parametrize("engine_kind", ["hf", "vllm", "static"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_sync_and_rl_steps(arch_models, arch, engine_kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = arch_models[arch]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tied = bool(policy.config.tie_word_embeddings)
    assert tied == ARCHS[arch]["tie_word_embeddings"]
    algo = AlgorithmConfig()
    learner = Learner(policy, algo, OptimConfig(lr=3e-3), TrainLoopConfig(micro_batch_size=8))
    engine = _engine(engine_kind, model_dir)
    try:
        sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=3)
        assert _logp_gap(learner, engine.generate(PROMPTS, sampling), tokenizer.pad_token_id) <= PARITY
        # a large perturbation of every weight (the head too), synced in place
        greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
        before = [g.completions[0].token_ids for g in engine.generate(PROMPTS, greedy)]
        torch.manual_seed(0)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.3 * torch.randn_like(p))
        engine.load_weights(policy.named_parameters())
        if engine_kind == "vllm":  # packed straight into the CPU kernels, not vLLM's staged reload
            assert engine.last_sync_path == "in-place"
        after = [g.completions[0].token_ids for g in engine.generate(PROMPTS, greedy)]
        assert after != before
        assert _logp_gap(learner, engine.generate(PROMPTS, sampling), tokenizer.pad_token_id) <= PARITY
        # RL steps: the learner's metrics measure the engine it was fed by
        for step in range(2):
            groups = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=10 + step))
            batch, adv_in = build_batch(_scored(groups, rewarded="<"), tokenizer.pad_token_id, algo, 16)
            batch.advantages = ADVANTAGES[algo.advantage](adv_in, algo)
            metrics = learner.step(batch)
            assert metrics["logp_diff_max"] <= PARITY, (step, metrics["logp_diff_max"])
            assert metrics["mismatch_kl"] <= 1e-6
            engine.load_weights(policy.named_parameters())
        if tied:
            assert policy.lm_head.weight is policy.get_input_embeddings().weight
        assert _logp_gap(learner, engine.generate(PROMPTS, sampling), tokenizer.pad_token_id) <= PARITY
    finally:
        engine.close()


@pytest.mark.slow  # ~26 s: a separate-process vLLM engine; the fast tier syncs the tied head in process
def test_tied_head_syncs_through_shared_memory(arch_models):
    """The engine core in its own process (vLLM's isolation mode): weights go through shared memory
    and the worker rebuilds the tied head too. The greedy samples after the sync are the HF
    engine's on the same weights, and the sampled log-probs are the learner's. (The untied micro
    base's variant, tests/rollouts/test_vllm_engine.py, is `slow`: a separate-process engine costs ~30 s.)"""
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = arch_models["qwen2-tied"]
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    learner = Learner(policy, AlgorithmConfig(), OptimConfig(lr=1e-3), TrainLoopConfig(micro_batch_size=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    hf = make_engine("hf", model_dir)
    hf.load_weights(policy.named_parameters())
    engine = make_engine("vllm", model_dir, dtype="float32", seed=0, kv_cache_gib=0.25, separate_process=True)
    try:
        engine.load_weights(policy.named_parameters())
        assert engine.last_sync_path == "shm in-place" and engine.last_sync_s > 0
        greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
        assert ([g.completions[0].token_ids for g in engine.generate(PROMPTS, greedy)]
                == [g.completions[0].token_ids for g in hf.generate(PROMPTS, greedy)])
        groups = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=3))
        assert _logp_gap(learner, groups, AutoTokenizer.from_pretrained(model_dir).pad_token_id) <= PARITY
    finally:
        engine.close()
        hf.close()

"""LoRA through peft: targets checked before models load, the engine samples with merged weights
(adapter untouched), checkpoints hold the adapter, the final directory is the merged model."""

from __future__ import annotations

import pytest
import torch

from rlvr.algorithms import AlgorithmConfig
from rlvr.archs import build_model, micro_config
from rlvr.config import OptimConfig
from rlvr.pretrain import local_tokenizer
from rlvr.train.learner import Learner, token_logp_and_entropy
from rollouts import SamplingConfig, make_engine


@pytest.fixture(autouse=True)
def _needs_peft():
    """Skipped without peft; imported when a test here first runs, not at collection (seconds)."""
    pytest.importorskip("peft")


PROMPTS = [f"User: Compute {a}+{b}.\nAssistant: <think>" for a, b in [(3, 4), (12, 5), (20, 9)]]


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> str:
    tok = local_tokenizer()
    return build_model(micro_config("qwen2-tied", len(tok)), tok, tmp_path_factory.mktemp("lora") / "qwen2")


def lora_policy(model_dir):
    from transformers import AutoModelForCausalLM

    from rlvr import lora

    policy = lora.wrap(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), r=4, alpha=8,
                       dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at 0 (the adapter is a no-op); give it a real delta
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return policy


def test_target_modules_that_match_nothing_are_an_error(qwen2_dir):
    from rlvr.lora import check_targets

    with pytest.raises(ValueError, match=r"lora.target_modules: \['qkv'\] matches no linear layer.*q_proj"):
        check_targets(qwen2_dir, ["qkv"])
    assert len(check_targets(qwen2_dir, ["q_proj"])) == 2  # one per layer
    assert "lm_head" not in " ".join(check_targets(qwen2_dir, "all-linear"))


@pytest.mark.parametrize("engine_kind", ["hf", "vllm"])
def test_engine_samples_with_merged_weights(qwen2_dir, engine_kind):
    from rlvr.lora import merged_named_tensors

    if engine_kind == "vllm":
        pytest.importorskip("vllm")
    policy = lora_policy(qwen2_dir)
    adapter_before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    kwargs = {"seed": 0, "kv_cache_gib": 0.25} if engine_kind == "vllm" else {}
    engine = make_engine(engine_kind, qwen2_dir, dtype="float32", **kwargs)
    try:
        engine.load_weights(merged_named_tensors(policy))
        for n, p in policy.named_parameters():  # nothing merged into the trained model
            assert torch.equal(p, adapter_before[n]), n
        groups = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=1))
        worst = 0.0
        policy.eval()
        for g in groups:
            for c in g.completions:
                ids = torch.tensor([g.prompt_ids + c.token_ids])
                with torch.no_grad():
                    logp, _ = token_logp_and_entropy(policy, ids, torch.ones_like(ids))
                worst = max(worst, float((logp[0, len(g.prompt_ids) - 1 :] - torch.tensor(c.logprobs)).abs().max()))
        assert worst <= 1e-4
        # and the merge is a real change: the base model's log-probs differ
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32)
        g = groups[0]
        c = g.completions[0]
        ids = torch.tensor([g.prompt_ids + c.token_ids])
        with torch.no_grad():
            base_logp, _ = token_logp_and_entropy(base, ids, torch.ones_like(ids))
        assert float((base_logp[0, len(g.prompt_ids) - 1 :] - torch.tensor(c.logprobs)).abs().max()) > 1e-2
    finally:
        engine.close()


def test_only_the_adapter_trains(qwen2_dir):
    from rlvr.train.learner import RLBatch

    policy = lora_policy(qwen2_dir)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ids = torch.randint(3, 300, (4, 12))
    mask = torch.zeros(4, 11)
    mask[:, 4:] = 1
    batch = RLBatch(ids, torch.ones_like(ids), mask, torch.randn(4, 1).expand(4, 11) * mask, torch.zeros(4, 11))
    Learner(policy, AlgorithmConfig(), OptimConfig(lr=1e-2)).step(batch)
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_lora_run_checkpoints_the_adapter_and_writes_a_merged_model(qwen2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlvr.checkpoint import latest_checkpoint, load_checkpoint
    from rlvr.config import TrainConfig, load_config
    from rlvr.loop import train

    run_dir = tmp_path / "run"
    over = [f"model={qwen2_dir}", f"run_dir={run_dir}", "engine.kind=hf", "train.steps=2", "train.prompts_per_step=2",
            "sampling.n=4", "sampling.max_tokens=12", "eval.every=0", "eval.num_prompts=4", "eval.k=1",
            "eval.max_tokens=8", "logging.progress=false", "logging.tensorboard=false", "optim.lr=1e-2",
            "train.threads=1", "lora.r=4", "lora.alpha=8", "lora.target_modules=[q_proj,v_proj]"]
    bad = load_config(TrainConfig, "configs/tiny_r1zero.yaml", over[:-1] + ["lora.target_modules=[nope]"])
    with pytest.raises(ValueError, match="matches no linear layer"):
        train(bad)
    assert not run_dir.exists()  # refused before anything was written or loaded
    summary = train(load_config(TrainConfig, "configs/tiny_r1zero.yaml", over))
    tensors, _ = load_checkpoint(latest_checkpoint(run_dir))
    adapter = tensors["learner"]["model"]
    assert adapter and all("lora_" in k for k in adapter)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    final = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert not any("lora" in n for n, _ in final.named_parameters())
    # the final model is the base with the checkpoint's adapter merged in
    from rlvr import lora

    rebuilt = lora.wrap(AutoModelForCausalLM.from_pretrained(qwen2_dir), r=4, alpha=8, dropout=0.0,
                        target_modules=["q_proj", "v_proj"])
    lora.load_adapter_state(rebuilt, adapter)
    merged = dict(rebuilt.merge_and_unload().named_parameters())
    for name, p in final.named_parameters():
        torch.testing.assert_close(p, merged[name], rtol=0, atol=1e-6, msg=name)

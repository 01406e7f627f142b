"""In-place weight sync into vLLM's CPU kernels (rollouts.inplace_sync): an engine synced in place
computes exactly what a fresh engine built from the same weights computes, in float32 (oneDNN
handles) and bfloat16 (the SGL kernel's packed weights on AMX CPUs); anything the fast path does
not recognise is left untouched for vLLM's own reload."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rollouts import SamplingConfig, make_engine


@pytest.fixture(autouse=True)
def _needs_vllm():
    """Skipped without vllm; imported when a test here first runs, not at collection (seconds)."""
    pytest.importorskip("vllm")


PROMPTS = [f"A conversation between User and Assistant.\nUser: Compute {a}+{b}-{c}.\nAssistant: <think>"
           for a, b, c in [(3, 4, 2), (12, 5, 7), (20, 9, 1), (7, 7, 7)]]


def _perturbed(model_dir: str, seed: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    weights = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    return {k: v + 0.2 * torch.randn_like(v) for k, v in weights.items()}


def _saved(model_dir: str, weights: dict[str, torch.Tensor], out: Path) -> str:
    from safetensors.torch import save_file

    out.mkdir()
    for f in Path(model_dir).iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    return str(out)


def _samples(engine) -> tuple[list, list]:
    groups = engine.generate(PROMPTS, SamplingConfig(n=2, temperature=1.0, max_tokens=12, seed=4))
    return [c.token_ids for g in groups for c in g.completions], [c.logprobs for g in groups for c in g.completions]


@pytest.mark.parametrize("dtype,eager", [("float32", True), ("bfloat16", True),
                                         pytest.param("float32", False, marks=pytest.mark.slow)])
def test_in_place_sync_equals_a_fresh_engine(micro_model, tmp_path, dtype, eager):
    """eager=False: vLLM's compiled graph (torch.compile, traced once) keeps computing through the
    same kernel handles, which the sync rewrites in place."""
    if dtype == "bfloat16" and not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("vLLM's bfloat16 CPU kernels need AVX-512 BF16")
    weights = _perturbed(micro_model, seed=0)
    opts = dict(dtype=dtype, seed=0, kv_cache_gib=0.25, enforce_eager=eager)
    engine = make_engine("vllm", micro_model, **opts)
    try:
        before = _samples(engine)
        sent = {k: v.clone() for k, v in weights.items()}
        engine.load_weights(sent.items())  # float32 tensors: a bfloat16 engine casts them on the way in
        assert engine.last_sync_path == "in-place"
        for t in sent.values():  # the engine holds its own packed copies: the learner may move on
            t.zero_()
        synced = _samples(engine)
    finally:
        engine.close()
    fresh_engine = make_engine("vllm", _saved(micro_model, weights, tmp_path / "w"), **opts)
    try:
        fresh = _samples(fresh_engine)
    finally:
        fresh_engine.close()
    assert synced[0] != before[0]
    assert synced[0] == fresh[0]  # the same kernels on the same packed weights: the same samples
    gap = max(abs(a - b) for x, y in zip(synced[1], fresh[1]) for a, b in zip(x, y))
    assert gap <= 1e-6


def test_unrecognised_weights_leave_the_model_untouched(micro_model):
    """plan() refuses (None) an unknown name, a wrong shape and a stacked layer missing a shard, and
    nothing is written before the whole plan is known."""
    from rollouts.inplace_sync import load, plan

    weights = _perturbed(micro_model, seed=1)
    engine = make_engine("vllm", micro_model, dtype="float32", seed=0, kv_cache_gib=0.25)
    try:
        greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
        before = [g.completions[0].token_ids for g in engine.generate(PROMPTS, greedy)]
        q = next(k for k in weights if k.endswith("q_proj.weight"))
        bad = {
            "unknown name": {**weights, "model.layers.0.mystery.weight": torch.zeros(2, 2)},
            "wrong shape": {**weights, q: torch.zeros(3, 3)},
            "missing shard": {k: v for k, v in weights.items() if not k.endswith("k_proj.weight")},
        }

        def refused(worker):
            model = worker.model_runner.get_model()
            return {case: plan(model, ws.items()) is None and not load(model, ws.items()) for case, ws in bad.items()}

        assert engine.llm.collective_rpc(refused)[0] == dict.fromkeys(bad, True)
        assert [g.completions[0].token_ids for g in engine.generate(PROMPTS, greedy)] == before
    finally:
        engine.close()

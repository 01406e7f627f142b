"""NCCL weight sync on GPUs (`make test-gpu`): the trainer broadcasts a perturbed policy into a rollout
worker's vLLM engine through vLLM's weight-transfer API; the worker then samples exactly what a fresh
engine loaded from those weights samples, and still does after it is killed, restarted and sent the
weights again over a new group. Needs two CUDA GPUs: NCCL cannot join the trainer and a worker on one.
The CPU half of this path (choosing the transport, the manifest, the engine's load) is in
tests/rlvr/rollout/test_nccl_sync.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

SMALL = ["engine.kind=vllm", "engine.dtype=float32", "engine.gpu_memory_utilization=0.3", "train.prompts_per_step=4",
         "sampling.n=3", "sampling.max_tokens=16", "eval.every=0", "logging.progress=false",
         "logging.tensorboard=false", "cluster.rollout_workers=1", "cluster.gpus_per_worker=1",
         "cluster.timeout_s=300"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs: NCCL cannot join the trainer and a rollout worker on one GPU")
    pytest.importorskip("vllm")
    pytest.importorskip("ray")
    from rlvr.archs import build_model, micro_config
    from rlvr.pretrain import local_tokenizer

    tok = local_tokenizer()
    return build_model(micro_config("llama", len(tok), hidden=128, heads=2), tok,
                       tmp_path_factory.mktemp("nccl-gpu") / "llama")


def config(model: str, run_dir: Path, *more: str):
    from rlvr.config import TrainConfig, load_config

    return load_config(TrainConfig, "configs/tiny_r1zero.yaml", [f"model={model}", f"run_dir={run_dir}", *SMALL, *more])


def draw(backend, rows, seed: int = 11) -> list[list[int]]:
    from rollouts import SamplingConfig

    groups, _, _ = backend.generate_and_score(rows, SamplingConfig(n=3, temperature=1.0, max_tokens=16, seed=seed))
    return [c.token_ids for g in groups for c in g.completions]


def test_a_worker_receives_weights_over_nccl_and_samples_like_a_fresh_engine(model_dir, tmp_path):
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.cluster.runtime import connect
    from rlvr.components import build_rubric, load_rows
    from rlvr.rollout.ray import RayRollouts

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.cuda.set_device(1)  # the trainer (the learner's rank 0) on GPU 1; Ray's one GPU (0) goes to the worker
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        cfg = config(model_dir, tmp_path / "run", "cluster.weight_sync=nccl")
        rows = load_rows(cfg, AutoTokenizer.from_pretrained(model_dir), build_rubric(cfg), model_dir,
                         verbose=False).train[:4]
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda:1")
        torch.manual_seed(0)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.3 * torch.randn_like(p))

        backend = RayRollouts(cfg, model_dir, connect(cfg.cluster))
        try:
            assert backend.transport == "nccl"
            before = draw(backend, rows)
            metrics = backend.load_weights(policy.named_parameters())
            assert metrics["sync_bytes"] == 4 * sum(p.numel() for p in policy.parameters())
            assert metrics["sync_s"] >= metrics["sync_load_s"] > 0
            synced = draw(backend, rows)
            os.kill(backend.pids[0], signal.SIGKILL)  # restarted on the next call: a new group, the weights resent
            again = draw(backend, rows)
            assert backend.restarts == 1
        finally:
            backend.close()

        fresh_dir = tmp_path / "fresh"
        policy.save_pretrained(fresh_dir)
        for f in Path(model_dir).iterdir():  # tokenizer and generation config
            if not (fresh_dir / f.name).exists():
                (fresh_dir / f.name).write_bytes(f.read_bytes())
        fresh_cfg = config(str(fresh_dir), tmp_path / "fresh-run", "cluster.weight_sync=shm")
        fresh = RayRollouts(fresh_cfg, str(fresh_dir), connect(fresh_cfg.cluster))
        try:
            expected = draw(fresh, rows)  # no sync: the engine samples the checkpoint it loaded
        finally:
            fresh.close()
    finally:
        ray.shutdown()
    assert synced != before  # the weights moved
    assert synced == expected
    assert again == expected

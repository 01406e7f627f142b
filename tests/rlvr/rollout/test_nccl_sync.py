"""NCCL weight sync (rlvr.rollout.nccl) on CPU: what can run without a GPU.

* choosing the transport: an explicit ``nccl`` that cannot work names the field and the alternatives;
  ``auto`` never picks it on CPU;
* the manifest the trainer sends (names, dtypes, shapes), against the checkpoint's own tensor names
  for a tied and an untied micro model, through vLLM's own check of metadata against iteration;
* the engine's end on vLLM's CPU build: an engine created with the NCCL weight-transfer config,
  driven through vLLM's start/finish calls, loading the manifest's tensors exactly as vLLM's NCCL
  receiver hands them on (its model's ``load_weights``), samples what a fresh engine with those
  weights samples. Only the broadcast itself is left out; tests/rlvr/rollout/test_gpu_nccl_sync.py runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlvr.config import ConfigError, TrainConfig, load_config
from rlvr.rollout.nccl import (
    NcclSync,
    call_with_deadline,
    check_own_gpus,
    choose_transport,
    late_ones,
    make_source,
    rank_offsets,
    update_info,
    weight_transfer_api_problem,
)
from rlvr.rollout.weight_sync import TRANSPORTS

PROMPTS = [f"User: Compute {a}+{b}-{c}.\nAssistant: <think>" for a, b, c in [(3, 4, 2), (12, 5, 7), (20, 9, 1)]]


def cfg_with(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=unused", "cluster.rollout_workers=1",
                                                                  *overrides])


def no_problem() -> None:
    return None


def test_explicit_nccl_on_this_cpu_machine_names_the_field_and_the_alternatives():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = cfg_with("engine.kind=vllm", "cluster.weight_sync=nccl")
    with pytest.raises(ConfigError) as err:
        choose_transport(cfg, nodes=1)
    msg = str(err.value)
    assert msg.startswith("cluster.weight_sync=nccl needs the learner on a CUDA GPU")
    assert "cluster.gpus_per_worker=0" in msg and "use cluster.weight_sync=shm (one node) or object_store" in msg


def test_ray_rollouts_refuse_nccl_on_cpu_before_any_engine_starts():
    pytest.importorskip("ray")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from rlvr.cluster.runtime import ClusterInfo
    from rlvr.rollout.ray import RayRollouts

    cfg = cfg_with("engine.kind=vllm", "cluster.weight_sync=nccl")
    with pytest.raises(ConfigError, match="cluster.weight_sync=nccl needs the learner on a CUDA GPU"):
        # no Ray instance runs: the check comes before any actor (or engine) is asked for
        RayRollouts(cfg, "unused", ClusterInfo(cpus=2, gpus=0, nodes=1, started_here=False))


def test_nccl_needs_a_vllm_engine():
    cfg = cfg_with("engine.kind=hf", "cluster.weight_sync=nccl", "cluster.gpus_per_worker=1")
    with pytest.raises(ConfigError, match=r"cluster.weight_sync=nccl needs engine.kind=vllm \(the hf engine has no "
                                          r"NCCL receiver\)"):
        choose_transport(cfg, nodes=1, cuda=True, api_problem=no_problem)


def test_a_vllm_without_the_api_is_named():
    cfg = cfg_with("engine.kind=vllm", "cluster.weight_sync=nccl", "cluster.gpus_per_worker=1")
    with pytest.raises(ConfigError, match="needs vLLM's weight-transfer API: the installed vLLM 0.1 has none; use "
                                          "cluster.weight_sync=shm"):
        choose_transport(cfg, nodes=1, cuda=True, api_problem=lambda: "the installed vLLM 0.1 has none")
    auto = cfg_with("engine.kind=vllm", "cluster.gpus_per_worker=1")
    assert choose_transport(auto, nodes=2, cuda=True, api_problem=lambda: "none") == "object_store"


def test_auto_picks_nccl_only_with_gpus_vllm_and_the_api():
    assert choose_transport(cfg_with("engine.kind=vllm"), nodes=1, cuda=False) == "shm"
    assert choose_transport(cfg_with("engine.kind=vllm"), nodes=3, cuda=False) == "object_store"
    assert choose_transport(cfg_with("engine.kind=vllm", "cluster.gpus_per_worker=1"), nodes=1, cuda=True,
                            api_problem=no_problem) == "nccl"
    assert choose_transport(cfg_with("engine.kind=hf", "cluster.gpus_per_worker=1"), nodes=1, cuda=True,
                            api_problem=no_problem) == "shm"
    assert choose_transport(cfg_with("engine.kind=vllm"), nodes=1, cuda=True, api_problem=no_problem) == "shm"
    explicit = cfg_with("engine.kind=vllm", "cluster.weight_sync=nccl", "cluster.gpus_per_worker=1")
    assert choose_transport(explicit, nodes=2, cuda=True, api_problem=no_problem) == "nccl"
    for kept in ("shm", "object_store"):  # an explicit host transport is never second-guessed
        assert choose_transport(cfg_with(f"cluster.weight_sync={kept}"), nodes=1, cuda=True) == kept


def test_the_installed_vllm_has_the_weight_transfer_api():
    pytest.importorskip("vllm")
    assert weight_transfer_api_problem() is None
    assert type(TRANSPORTS["nccl"].engine_kwargs()["weight_transfer_config"]).__name__ == "WeightTransferConfig"
    assert TRANSPORTS["shm"].engine_kwargs() == {} == TRANSPORTS["object_store"].engine_kwargs()


def test_rank_offsets_and_shared_gpus():
    assert rank_offsets([1, 1, 1]) == [1, 2, 3]
    assert rank_offsets([2, 1]) == [1, 3]  # a worker whose engine spans two GPUs takes two ranks
    assert check_own_gpus("GPU-a", ["GPU-b", "GPU-c"]) is None
    assert check_own_gpus("GPU-a", ["GPU-b", "GPU-a"]).startswith("rollout worker 1 shares the trainer's GPU (GPU-a)")
    assert check_own_gpus("GPU-a", ["GPU-a", "GPU-a"]).startswith("rollout workers 0, 1 share the trainer's GPU")


def test_a_blocked_call_is_given_up_at_its_deadline_and_the_late_are_named():
    import threading
    import time

    never = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        call_with_deadline(never.wait, 0.2)  # a broadcast whose peer is gone never returns
    assert time.monotonic() - t0 < 5
    with pytest.raises(ZeroDivisionError):  # the call's own error reaches the caller's thread
        call_with_deadline(lambda: 1 / 0, 5)
    seen = []
    assert call_with_deadline(lambda: 7, 5, setup=lambda: seen.append(threading.current_thread().name)) == 7
    assert seen == ["rlvr-nccl-sync"]  # the setup (the CUDA device is per thread) runs in the thread that calls
    assert late_ones({2, 0}) == "rollout workers 0, 2" and late_ones({1}) == "rollout worker 1"
    assert late_ones(set()) == "the trainer (rank 0 of the NCCL group)"  # every worker answered: the trainer hung


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from rlvr.archs import build_model, micro_config
    from rlvr.pretrain import local_tokenizer

    tok = local_tokenizer()
    root = tmp_path_factory.mktemp("nccl-archs")
    return {a: build_model(micro_config(a, len(tok)), tok, root / a) for a in ("qwen2-tied", "llama")}


def checkpoint_tensors(model_dir: str) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        for name in f.keys():
            t = f.get_slice(name)
            out[name] = (t.get_dtype(), list(t.get_shape()))
    return out


def perturbed(model_dir: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


@pytest.mark.parametrize("arch", ["qwen2-tied", "llama"])
@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
def test_the_manifest_names_what_the_checkpoint_holds(models, arch, wire):
    pytest.importorskip("vllm")
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerWeightTransferEngine,
        NCCLWeightTransferUpdateInfo,
    )

    policy = perturbed(models[arch])
    source = make_source(getattr(torch, wire), "cpu")
    source.stage(policy.named_parameters())
    info = update_info(source)
    NCCLWeightTransferUpdateInfo(**info)  # the engine's own parser accepts it
    ckpt = checkpoint_tensors(models[arch])
    assert info["names"] == list(dict(policy.named_parameters()))  # the learner's order (vLLM loads layer by layer)
    assert set(info["names"]) == set(ckpt)  # every tensor a fresh engine would load, and nothing else
    assert [ckpt[n][1] for n in info["names"]] == info["shapes"]
    assert set(info["dtype_names"]) == {wire}
    tied = json.loads((Path(models[arch]) / "config.json").read_text()).get("tie_word_embeddings", False)
    assert ("lm_head.weight" in info["names"]) == (not tied) and tied == (arch == "qwen2-tied")
    # vLLM's trainer engine checks iteration against the metadata it announced, tensor by tensor
    sent = list(NCCLTrainerWeightTransferEngine._checked_iter(source, source.metadata()))
    assert [n for n, _ in sent] == info["names"]
    assert source.nbytes() == sum(t.numel() * t.element_size() for _, t in sent)
    for (_, t), (_, p) in zip(sent, policy.named_parameters()):
        assert torch.equal(t, p.detach().to(t.dtype))


def load_as_nccl_receiver_does(worker, named_tensors):
    """What vLLM's NCCLWeightTransferEngine does with each unpacked chunk (``post_unpack_func``)."""
    worker.weight_transfer_engine.model.load_weights(named_tensors)


def sample(engine) -> list[list[int]]:
    from rollouts import SamplingConfig

    groups = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=5))
    return [c.token_ids for g in groups for c in g.completions]


@pytest.mark.slow  # two vLLM CPU engines per architecture
@pytest.mark.parametrize("arch", ["qwen2-tied", "llama"])
def test_the_engines_end_loads_the_manifest_like_a_fresh_engine(models, arch, tmp_path):
    pytest.importorskip("vllm")
    from rollouts.vllm_engine import VLLMEngine

    policy = perturbed(models[arch])
    source = make_source(torch.float32, "cpu")
    source.stage(policy.named_parameters())
    engine = VLLMEngine(models[arch], dtype="float32", seed=0, threads=1, **NcclSync.engine_kwargs())
    try:
        before = sample(engine)
        receiver = NcclSync()  # the engine's end, as a rollout worker holds it
        receiver.begin(engine)
        engine.llm.collective_rpc(load_as_nccl_receiver_does, args=(list(source),))
        assert receiver.end(engine) > 0 and engine.last_sync_path == "nccl"
        synced = sample(engine)
    finally:
        engine.close()
    out = tmp_path / "fresh"
    policy.save_pretrained(out)
    for f in Path(models[arch]).iterdir():  # tokenizer and generation config
        if not (out / f.name).exists():
            (out / f.name).write_bytes(f.read_bytes())
    fresh = VLLMEngine(str(out), dtype="float32", seed=0, threads=1)
    try:
        expected = sample(fresh)
    finally:
        fresh.close()
    assert synced != before  # the weights moved
    assert synced == expected

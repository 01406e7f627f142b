"""The FSDP2 learner (``cluster.learner_sharding: fsdp``, rlvr.train.fsdp) on a local Ray instance and gloo.

Two ranks each hold half of the policy (and of the reference); they must take the update one
process takes on the whole batch in every ``loss_agg`` mode (two by default, all four under
``-m slow``), with the optimiser state in the
single-process checkpoint layout. Shards of different sizes (different micro-batch counts) must
not hang; the log-probs of a KL in the reward, checkpoints and the final model are collectives.
The ``gpu`` test runs the same sharded learner on NCCL (two processes, one GPU each).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import CASES, assert_same_run, batches, final_params, run_config, sample_scored
from helpers import learner_config as config

from rlvr.checkpoint import latest_checkpoint, load_checkpoint
from rlvr.cluster.learner_group import LearnerGroup
from rlvr.config import TrainConfig
from rlvr.train.parallel import plan_for
from rlvr.train.side import build_policy_side

FSDP = ["cluster.learner_ranks=2", "cluster.learner_sharding=fsdp", "cluster.timeout_s=60"]
# KL in the reward (collective log-probs of the policy and the sharded reference)
KL_REWARD = ["algorithm.advantage=reinforce_pp", "algorithm.kl_in_reward=true", "algorithm.kl_coef=0.05"]


@pytest.fixture
def ray_local(ray_instance):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rank 0 beside rank 1 on a 2-core machine
    yield ray_instance
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scored(micro_model):
    return sample_scored(micro_model)


def fresh_side(cfg: TrainConfig, model_dir: str, device: str = "cpu", plan=None):
    torch.manual_seed(cfg.train.seed)
    return build_policy_side(cfg, model_dir, device, plan)


def fresh_group(cfg: TrainConfig, model_dir: str) -> LearnerGroup:
    torch.manual_seed(cfg.train.seed)
    return LearnerGroup(cfg, model_dir)


def assert_close_state(a, b, tol: float) -> None:
    """Nested dicts / lists of tensors and plain values: same structure, tensors within ``tol``."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and float((a.float() - b.float()).abs().max()) <= tol
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close_state(a[k], b[k], tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close_state(x, y, tol)
    else:
        assert a == b


def test_fsdp_config_is_checked():
    from rlvr.config import load_config

    def cfg(*more: str) -> TrainConfig:
        return load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "train.prompts_per_step=4", *more])

    assert cfg().cluster.learner_sharding == "ddp"
    assert cfg().train.shared_prefix and not cfg(*FSDP).train.shared_prefix  # FSDP: the flat forward
    with pytest.raises(ValueError, match="learner_sharding=fsdp shards the policy over the learner ranks, but "
                                         "cluster.learner_ranks=1"):
        cfg("cluster.learner_sharding=fsdp")
    with pytest.raises(ValueError, match="learner_sharding=fsdp with lora is not supported"):
        cfg(*FSDP, "lora.r=4")
    with pytest.raises(ValueError, match=r"learner_sharding=fsdp with algorithm.advantage=gae \(a PPO critic\)"):
        load_config(TrainConfig, "configs/ppo.yaml", ["model=m", "train.prompts_per_step=4", *FSDP])
    with pytest.raises(ValueError, match="learner_sharding"):
        cfg("cluster.learner_sharding=zero3")


# token-mean here (and seq-mean-token-mean in the unequal-shards test); the other modes take the same
# path through the learner's normalisers (each costs a rank's start-up): `make test-slow`
def test_memory_preflight_counts_a_shard_per_rank():
    """A policy whose learner state does not fit one GPU fits when FSDP shards it over 8 (not refused before loading)."""
    from rlvr import preflight
    from rlvr.dry_run import KNOWN_CONFIGS

    model = KNOWN_CONFIGS["Qwen/Qwen2.5-Math-7B"]
    base = dict(model="Qwen/Qwen2.5-Math-7B", engine={"kind": "vllm", "gpu_memory_utilization": 0.3, "sleep_level": 1},
                train={"micro_batch_size": 1, "gradient_checkpointing": True, "dtype": "bfloat16",
                       "prompts_per_step": 8}, sampling={"max_tokens": 512})
    one = preflight.estimate(TrainConfig(**base), model, gpu_gib=80, prompt_tokens=256)
    sharded = preflight.estimate(TrainConfig(**base, cluster={"learner_ranks": 8, "learner_sharding": "fsdp"}), model,
                                 gpu_gib=80, prompt_tokens=256)
    assert not one.fits and sharded.fits
    assert sharded.parts["AdamW moments (float32, 1/8 per rank)"] == pytest.approx(one.parts["AdamW moments (float32)"] / 8)
    with pytest.raises(preflight.PreflightError, match="cluster.learner_sharding=fsdp"):
        preflight.check(TrainConfig(**base), model, gpu_gib=24, prompt_tokens=256)


@pytest.mark.parametrize("case", [c if c == "token-mean" else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_fsdp_ranks_take_the_one_process_update(ray_local, micro_model, scored, case):
    from rlvr.train.fsdp import is_sharded  # torch.distributed.checkpoint: seconds, not at collection

    cfg = config(micro_model, f"algorithm.loss_agg={case}", *CASES[case], *FSDP)
    data = batches(cfg, scored)
    single = fresh_side(cfg, micro_model)
    single_metrics = [single.learner.step(batch) for batch, _ in data]
    group = fresh_group(cfg, micro_model)
    side = group.side
    try:
        assert is_sharded(side.policy) and (side.ref is None or is_sharded(side.ref))
        group.broadcast_state()  # nothing to send: every rank sharded the same weights
        metrics = [group.step(batch) for batch, _ in data]
        state = group.state_dict()["learner"]
    finally:
        group.close()
    start = fresh_side(cfg, micro_model).policy.state_dict()
    assert max(float((single.policy.state_dict()[k] - v).abs().max()) for k, v in start.items()) > 1e-4  # it moved
    assert_close_state(state["model"], single.policy.state_dict(), 1e-5)
    # the full optimiser state in the single-process layout (indices, param_groups), moments within 1e-5
    assert_close_state(state["optim"], single.learner.opt.state_dict(), 1e-5)
    assert state["sched"] == single.learner.sched.state_dict()
    for m, s in zip(metrics, single_metrics):  # the clip saw the global norm, not a shard's
        assert m["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4)


def test_unequal_shards_kl_logp_and_checkpoint_layout(ray_local, micro_model, scored):
    """Rank 0 with 3 micro-batches, rank 1 with 1 (it repeats one at weight 0), the KL-in-reward
    log-probs as a collective, and a single process's checkpoint loaded into the shards."""
    cfg = config(micro_model, "train.micro_batch_size=4", "algorithm.loss_agg=seq-mean-token-mean", *KL_REWARD, *FSDP)
    (batch, _), (batch2, _) = batches(cfg, scored)
    single_group = fresh_group(cfg.model_copy(update={"cluster": cfg.cluster.model_copy(
        update={"learner_ranks": 1, "learner_sharding": "ddp"})}), micro_model)
    single = single_group.side
    single_logp = single.learner.policy_and_reference_logp(batch)
    single.learner.step(batch)
    group = fresh_group(cfg, micro_model)
    try:
        logp = group.policy_and_reference_logp(batch)
        for mine, theirs in zip(logp, single_logp):
            assert mine.shape == theirs.shape and float((mine - theirs).abs().max()) < 1e-5
        group.step_shards([batch.slice(0, 12), batch.slice(12, 16)])  # 3 groups and 1 group
        assert_close_state(group.state_dict()["learner"]["model"], single.policy.state_dict(), 1e-5)
        ckpt = group.state_dict()
        theirs = single_group.state_dict()
        assert_close_state(ckpt, theirs, 1e-5)  # the same layout: learner {model, optim, sched, reference}
        single.learner.step(batch2)  # a single process moves on; its checkpoint loads into the shards exactly
        theirs = single_group.state_dict()
        group.load_state_dict(theirs)
        assert_close_state(group.state_dict(), theirs, 0.0)
    finally:
        group.close()


def test_fsdp_run_checkpoints_what_one_process_loads(ray_local, micro_model, scored, tmp_path):
    """``train()`` with two FSDP ranks (KL in the reward: collective log-probs each step); its checkpoint
    loads into a single-process learner, which holds the run's final weights and steps on."""
    from rlvr.loop import train

    run_dir = tmp_path / "fsdp"
    cfg = run_config(micro_model, run_dir, 2, *KL_REWARD, *FSDP, "train.threads=1", "eval.num_prompts=4")
    train(cfg)
    assert len(json.loads((run_dir / "cluster.json").read_text())["learner_ranks"]) == 2
    tensors, state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 2 and {"learner", "rng"} <= tensors.keys() and tensors["learner"]["reference"]
    one = run_config(micro_model, tmp_path / "one", 2, *KL_REWARD)
    group = fresh_group(one, micro_model)
    group.load_state_dict(tensors)
    side = group.side
    final = final_params(run_dir)  # written by rank 0 from the gathered weights
    saved = json.loads((run_dir / "final" / "config.json").read_text())["architectures"]
    assert saved == json.loads((Path(micro_model) / "config.json").read_text())["architectures"]  # not FSDP<class> (transformers strips it)
    params = dict(side.policy.named_parameters())
    assert final.keys() == params.keys() and all(torch.equal(final[k], params[k]) for k in final)
    assert len(side.learner.opt.state) == len(params) and side.learner.sched.last_epoch == 2
    (batch, _), _ = batches(config(micro_model, *KL_REWARD), scored)
    assert side.learner.step(batch)["grad_norm"] > 0


# --- NCCL (a GPU node with two GPUs) --------------------------------------------------------


def _fsdp_rank(rank: int, backend: str, device: str, port: int, cfg_data: dict, model_dir: str, shards, out: str):
    """One of two spawned processes: the sharded learner steps on ``shards[step][rank]`` (no Ray)."""
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(rank)
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        side = fresh_side(TrainConfig.model_validate(cfg_data), model_dir, device, plan_for(2, "fsdp", device))
        metrics = [side.learner.step(step_shards[rank]) for step_shards in shards]
        state = side.learner.state_dict()
        if rank == 0:
            torch.save({"state": state, "metrics": metrics}, out)
    finally:
        dist.destroy_process_group()


def assert_two_processes_equal_one(backend: str, device: str, model_dir: str, scored, tmp_path, tol: float) -> None:
    import socket

    import torch.multiprocessing as mp

    cfg = config(model_dir, "algorithm.kl_coef=0.05", "train.micro_batch_size=4", *FSDP)
    data = [batch for batch, _ in batches(cfg, scored)]
    shards = [[b.slice(0, 12), b.slice(12, 16)] for b in data]  # 3 and 1 micro-batches
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    args = (backend, device, port, cfg.model_dump(mode="json", by_alias=True), model_dir, shards, out)
    mp.start_processes(_fsdp_rank, args=args, nprocs=2, join=True, start_method="spawn")
    got = torch.load(out, weights_only=False)
    single = fresh_side(cfg, model_dir, device)
    single_metrics = [single.learner.step(b) for b in data]
    assert_close_state(got["state"]["model"], {k: v.cpu() for k, v in single.policy.state_dict().items()}, tol)
    for m, s in zip(got["metrics"], single_metrics):
        assert m["grad_norm"] == pytest.approx(s["grad_norm"], rel=10 * tol)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"NCCL FSDP needs 2 GPUs (one per rank); {torch.cuda.device_count()} visible")
def test_nccl_fsdp_ranks_take_the_one_process_update(micro_model, scored, tmp_path):
    """Two processes, one GPU each, NCCL: the sharded learner's two steps equal one process's on one GPU."""
    assert_two_processes_equal_one("nccl", "cuda", micro_model, scored, tmp_path, 1e-4)  # GPU reduction order


@pytest.mark.slow  # the GPU test's harness on gloo (two spawned processes, no Ray)
def test_spawned_gloo_fsdp_ranks_take_the_one_process_update(micro_model, scored, tmp_path):
    assert_two_processes_equal_one("gloo", "cpu", micro_model, scored, tmp_path, 1e-5)


@pytest.mark.slow  # two more runs (~25 s)
def test_fsdp_run_resumes_bit_identically(ray_local, micro_model, tmp_path):
    """A resume loads the checkpoint into every rank's shards (and the engine from the gathered weights)."""
    from rlvr.loop import train

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    more = [*FSDP, "train.threads=1", "eval.num_prompts=4", "checkpoint.every=1"]
    train(run_config(micro_model, whole, 2, *more))
    shutil.copytree(whole, crashed)  # a crash after the step-1 checkpoint
    shutil.rmtree(crashed / "checkpoints" / "step_000002")
    shutil.rmtree(crashed / "final")
    train(run_config(micro_model, crashed, 2, *more), resume=True)
    assert_same_run(whole, crashed, 2)

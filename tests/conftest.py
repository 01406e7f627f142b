"""Shared fixtures (a micro base model built by the real pretraining stage, the small-run config, one
Ray instance per session) and the test tiers.

Tiers (markers, assigned here unless a test sets one itself):
* ``cluster``: uses the Ray fixture (``ray_instance``, or a wrapper of it) or lives in tests/rlvr/cluster/;
* ``e2e``: uses a fixture that builds or loads a model (MODEL_FIXTURES), so it starts an engine or trains,
  or one that serves an outside framework's app (SERVER_FIXTURES);
* ``unit``: everything else (`make test-unit`: seconds, no model).
A test that would be ``unit`` by its fixtures but starts processes (the CLI, the code sandbox on many
programs, a tracker's service) or waits out a timeout says ``@pytest.mark.e2e`` itself (with why).
``slow`` and ``gpu`` are set by the tests themselves and left out of `make test`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never download: a hub id fails at once instead of after the hub client's retries (20 s and more a
# call here). Set before anything imports huggingface_hub or datasets, which read these once, at import;
# CLI subprocesses inherit them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# tests/helpers.py is importable as `helpers` from every test folder, whatever pytest's import mode
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

TIERS = ("unit", "e2e", "cluster")
RAY_FIXTURE = "ray_instance"
CLUSTER_DIR = TESTS / "rlvr" / "cluster"
# fixtures that build or load a model (a test using one, or a fixture built on one, is e2e); a new
# fixture that builds a model goes here, a test that builds one in its body says @pytest.mark.e2e
MODEL_FIXTURES = {
    "micro_pretrain_cfg", "micro_model",  # here: the pretrained micro base
    "arch_models",  # tests/rlvr/test_architectures.py
    "tiny_model",  # tests/rlvr/test_user_errors.py
    "llama_dir",  # tests/rlvr/train/test_precision.py
    "qwen2_dir",  # tests/rlvr/train/test_lora.py
    "gqa_models",  # tests/rollouts/test_static_engine.py
    "models",  # tests/rlvr/test_gpu.py, tests/rlvr/rollout/test_nccl_sync.py
    "model_dir",  # tests/rlvr/rollout/test_gpu_nccl_sync.py
    "reward_model_dir",  # tests/rlvr/test_reward_model.py
}
# fixtures that serve an outside framework's server (seconds of imports before the first request): e2e too
SERVER_FIXTURES = {
    "game_url",  # tests/rlvr/envs/test_openenv.py: openenv-core's app (gradio, fastmcp) on uvicorn
}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test process computes on one torch thread unless a test sets another count (and puts it back):
    the models here are tiny, and on two shared cores an OpenMP team of two makes every tiny op wait for
    its second thread. (A run with train.threads=1, helpers.TINY, sets the same count; subprocesses and
    Ray workers get theirs from their config.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def micro_pretrain_cfg(tmp_path_factory):
    from rlvr.config import PretrainConfig

    out = tmp_path_factory.mktemp("micro-base")
    cfg = PretrainConfig(out_dir=str(out))
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.intermediate_size = 64, 2, 1, 128
    # enough steps that completions are well-formed and sometimes right, so rewards vary in a group
    cfg.corpus.num_docs = 4000
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps, cfg.train.lr = 150, 32, 10, 1e-2
    # one thread: the weights are bit-identical to two threads' (checked), and one is robust where two are not
    # (2-core AVX2: 10.9 s vs 8.4 s for the fixture on an idle machine, but 13.4 s vs 16.0 s with another
    # process on one core, and 153 s for two threads when a second one took the other core)
    cfg.train.threads = 1
    return cfg


@pytest.fixture(scope="session")
def micro_model(micro_pretrain_cfg) -> str:
    """Directory of a micro Llama pretrained for a few steps (real tokenizer, real weights)."""
    import torch

    from rlvr.pretrain import pretrain

    threads = torch.get_num_threads()
    try:
        return str(pretrain(micro_pretrain_cfg, progress=False))
    finally:
        torch.set_num_threads(threads)  # pretrain sets the process's count: the tests keep the session's


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides, model="m", run_dir=None, base=..., **{"train.steps": 2})``: a TrainConfig from
    configs/tiny_r1zero.yaml with the small run most tests train (helpers.TINY) and the caller's overrides
    (``key=value`` strings, lists of them, or dotted keys as keyword arguments); see helpers.tiny_config."""
    from helpers import tiny_config

    return tiny_config


# --- one Ray instance per session -------------------------------------------------------------------

@pytest.fixture(scope="session")
def ray_session():
    """The session's local Ray instance (2 CPUs): started by the first test that asks for it (through
    ``ray_instance``), shut down after the last test of the run that asks for it (pytest_runtest_teardown),
    so its daemons do not take CPU from the tests after it, and at the latest when the session ends."""
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_instance(ray_session):
    """The session's Ray instance, started if it is not running. Whatever the order the tests run in
    (``-k``, ``--lf``, a single test), it starts once and stops once."""
    if not ray_session.is_initialized():
        from rlvr.cluster.runtime import start_local_ray

        start_local_ray(2)
    return ray_session


LAST_RAY_USER = pytest.StashKey[str | None]()


def pytest_collection_finish(session):
    """Note the last test of this run (after selection and reordering) that uses Ray."""
    users = [item for item in session.items if RAY_FIXTURE in getattr(item, "fixturenames", ())]
    session.config.stash[LAST_RAY_USER] = users[-1].nodeid if users else None


def pytest_runtest_teardown(item, nextitem):
    """Stop Ray once the last test that uses it has run."""
    if item.nodeid != item.config.stash.get(LAST_RAY_USER, None):
        return
    ray = sys.modules.get("ray")  # absent: the fixture skipped the test, nothing was started
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# --- tiers ------------------------------------------------------------------------------------------

def tier_of(item) -> str:
    names = set(getattr(item, "fixturenames", ()))
    if RAY_FIXTURE in names or CLUSTER_DIR in Path(str(item.path)).resolve().parents:
        return "cluster"
    if names & (MODEL_FIXTURES | SERVER_FIXTURES):
        return "e2e"
    return "unit"


def pytest_collection_modifyitems(config, items):
    """Give every test one tier (unit, e2e or cluster) unless it has one of its own."""
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(tier_of(item))


def cpu_line() -> str:
    """Which CPU ran the suite: its model, its vector extensions (from /proc/cpuinfo, as `lscpu` lists them)
    and torch's kernel level. A result is only known for the CPU kinds it ran on (AVX2-only vs AVX-512)."""
    import torch

    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")))
    return (f"cpu: {model}, {os.cpu_count()} cores; {' '.join(vector) or 'no AVX flags read'}; "
            f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(cpu_line())

"""Shared fixtures: a micro base model built by the real pretraining stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# tests/helpers.py is importable as `helpers` from every test folder, whatever pytest's import mode
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture(scope="session")
def micro_pretrain_cfg(tmp_path_factory):
    from rlvr.config import PretrainConfig

    out = tmp_path_factory.mktemp("micro-base")
    cfg = PretrainConfig(out_dir=str(out))
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.intermediate_size = 64, 2, 1, 128
    # enough steps that completions are well-formed and sometimes right, so rewards vary in a group
    cfg.corpus.num_docs = 4000
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps, cfg.train.lr = 150, 32, 10, 1e-2
    return cfg


@pytest.fixture(scope="session")
def micro_model(micro_pretrain_cfg) -> str:
    """Directory of a micro Llama pretrained for a few steps (real tokenizer, real weights)."""
    from rlvr.pretrain import pretrain

    return str(pretrain(micro_pretrain_cfg, progress=False))


RAY_FIXTURE = "ray_instance"


@pytest.fixture
def ray_instance():
    """A local Ray instance (2 CPUs), started by the first test that asks for it and kept for the
    tests that follow it and ask too (the cluster modules sit side by side), so the suite pays
    Ray's start-up once rather than once per module; see pytest_runtest_teardown for the stop."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from rlvr.cluster.runtime import start_local_ray

        start_local_ray(2)
    return ray


def pytest_runtest_teardown(item, nextitem):
    """Stop the shared Ray instance once the next test does not use it (or at the end), so its
    daemons do not take CPU from the rest of the suite."""
    if RAY_FIXTURE not in getattr(item, "fixturenames", ()):
        return
    if nextitem is not None and RAY_FIXTURE in getattr(nextitem, "fixturenames", ()):
        return
    ray = sys.modules.get("ray")  # absent: the fixture skipped the test, nothing was started
    if ray is not None and ray.is_initialized():
        ray.shutdown()

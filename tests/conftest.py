"""Shared fixtures: a micro base model built by the real pretraining stage."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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

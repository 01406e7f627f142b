"""Pretraining corpora come from the task registry; the arithmetic corpus is byte-identical to
the one the demo's published figures were made with (before it moved into rlvr.tasks.arith)."""

from __future__ import annotations

import hashlib

import pytest

from rlvr.config import PretrainConfig, load_config
from rlvr.pretrain import EOS, build_corpus, config_hash
from rlvr.tasks import TASKS


def digest(docs: list[str]) -> str:
    return hashlib.sha256("\n".join(docs).encode()).hexdigest()


def test_arith_corpus_is_byte_identical():
    docs = build_corpus(PretrainConfig(corpus={"num_docs": 3000}))
    assert len(docs) == 3000 and all(d.endswith(EOS) and d.count(EOS) == 1 for d in docs)
    assert digest(docs) == "8c304ae405a4cfcb3e049cd5e237fce6ecba4ec93c146f3066e50b6a17cf43f4"


@pytest.mark.slow
def test_demo_corpus_and_cache_key_unchanged():
    cfg = load_config(PretrainConfig, "configs/tiny_pretrain.yaml")
    assert config_hash(cfg) == "27ff78b8c6d29ef5"  # a cached artifacts/tiny-base stays valid
    assert digest(build_corpus(cfg)) == "f2f1f5dc86d855449d61494ac6f9dbb788806cbee5a06d139eb99c199e453ecc"


def test_corpus_comes_from_the_registry():
    assert TASKS["arith"].corpus is not None and TASKS["pyfunc"].corpus is not None
    docs = build_corpus(PretrainConfig(task={"kind": "pyfunc"}, corpus={"num_docs": 200}))
    assert len(docs) == 200 and all(d.endswith(EOS) for d in docs)


def test_kind_without_corpus_is_a_clear_error():
    cfg = PretrainConfig(task={"kind": "gsm8k"})
    with pytest.raises(ValueError, match="no procedural pretraining corpus"):
        build_corpus(cfg)

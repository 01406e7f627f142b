"""``pyfunc``: procedural Python functions rewarded by the sandboxed ``code`` verifier."""

from __future__ import annotations

import json
import random

import pytest

import verifiers
from rlvr.config import PretrainConfig, TrainConfig
from rlvr.pretrain import build_corpus
from rlvr.tasks import TASKS, load_task, split_of
from rlvr.tasks.pyfunc import FAMILIES, PyFuncTask, check_problem, sample_problem
from verifiers.code import status_of


def r1(code: str, think: str = "plan") -> str:
    return f" {think} </think> <answer>\n{code}</answer>"


@pytest.fixture(scope="module")
def splits():
    return load_task(PyFuncTask(train_size=300, test_size=60), [verifiers.get("code")])


def test_registered_with_code_verifier_and_corpus():
    kind = TASKS["pyfunc"]
    assert kind.verifier == "code" and kind.corpus is not None
    cfg = TrainConfig(model="m", task={"kind": "pyfunc"})
    assert [t.verifier for t in cfg.rewards.terms] == ["code", "r1_format"]


def test_rows_carry_the_verifier_context(splits):
    for row in splits.train + splits.test:
        assert row["prompt"] in row["question"] and row["prompt"].startswith(f"def {row['entry_point']}(")
        assert row["test"].startswith("def check(candidate):") and row["test"].count("assert") == 5
        # the hidden test's inputs are not in the prompt: the prompt shows no call at all
        assert "candidate" not in row["question"] and "==" not in row["question"]
    assert all(split_of(r["question"], 0.15) == "test" for r in splits.test)
    assert not {r["question"] for r in splits.train} & {r["question"] for r in splits.test}
    assert len({r["family"] for r in splits.test}) >= 10


def test_thousands_of_distinct_problems():
    cfg, rng = PyFuncTask(), random.Random(0)
    assert len({sample_problem(rng, cfg).question(cfg) for _ in range(20_000)}) >= 2000


@pytest.mark.e2e  # every problem's solution and draft through the sandbox (a process each)
def test_canonical_solutions_pass_and_drafts_fail_in_the_sandbox(splits):
    code = verifiers.get("code")
    rows = splits.test[:40]
    good = code.score_many([r1(r["solution"]) for r in rows], rows)
    assert [status_of(s) for s in good] == ["passed"] * len(rows)
    rng, comps, tasks = random.Random(0), [], []
    for name in FAMILIES:  # every template's close-but-wrong drafts
        for _ in range(3):
            c = check_problem(sample_problem(rng, PyFuncTask(families=[name])), 5)
            assert c.wrongs, f"{name}: no draft fails the hidden test"
            p = c.problem
            row = {"prompt": p.stub, "test": c.test, "entry_point": p.name}
            comps += [r1(p.code(w), "quick draft") for w in c.wrongs]
            tasks += [row] * len(c.wrongs)
    bad = code.score_many(comps, tasks)
    assert all(s.reward == 0.0 and s.error is None for s in bad), [
        (c, status_of(s)) for c, s in zip(comps, bad) if s.reward or s.error]


def test_corpus_excludes_held_out_problems_and_mixes_plans_and_drafts():
    cfg = PretrainConfig(task={"kind": "pyfunc"}, corpus={"num_docs": 3000, "reason_prob": {1: 0.8, 2: 0.35, 3: 0.15}})
    test_stubs = {r["prompt"] for r in load_task(cfg.task).test}
    docs = build_corpus(cfg)
    # every document quotes its stub (R1 documents and plain definitions alike)
    stubs = {d.split("def ", 1)[1].split('"""\n', 2)[0] for d in docs}
    assert not {s.split("def ", 1)[1].split('"""\n', 2)[0] for s in test_stubs} & stubs
    r1_docs = [d for d in docs if d.startswith("Assistant")]
    drafts = [d for d in r1_docs if "<think> quick draft </think>" in d]
    assert 0.3 < len(drafts) / len(r1_docs) < 0.8 and any("</think> <answer>" not in d for d in drafts)
    assert any(d.startswith("def ") for d in docs)  # plain definitions outside the template


def test_unknown_family_is_a_config_error():
    with pytest.raises(ValueError, match="unknown template"):
        PyFuncTask(families=["nope"])


@pytest.mark.e2e  # pretrains a micro base in its body, then trains it
def test_e2e_pretrain_then_rl_with_the_sandbox(tmp_path):
    """Micro base pretrained on the pyfunc corpus, 2 GRPO steps on the HF engine, every reward
    from the sandboxed code verifier."""
    from rlvr.loop import train
    from rlvr.pretrain import pretrain

    pcfg = PretrainConfig(
        out_dir=str(tmp_path / "base"), vocab_size=512, task={"kind": "pyfunc"},
        model={"hidden_size": 64, "num_layers": 2, "num_heads": 1, "intermediate_size": 128},
        corpus={"num_docs": 600, "reason_prob": {1: 0.8, 2: 0.35, 3: 0.15}},
        train={"steps": 10, "batch_size": 16, "warmup_steps": 2, "lr": 1e-2, "threads": 1})
    model = str(pretrain(pcfg, progress=False))
    cfg = TrainConfig(
        model=model, run_dir=str(tmp_path / "run"), task={"kind": "pyfunc", "train_size": 50, "test_size": 8},
        engine={"kind": "hf"}, sampling={"n": 4, "max_tokens": 48},
        train={"steps": 2, "prompts_per_step": 4, "micro_batch_size": 16, "threads": 1},
        eval={"every": 0, "num_prompts": 8, "k": 2, "max_tokens": 48},
        logging={"tensorboard": False, "progress": False}, checkpoint={"every": 0})
    summary = train(cfg, overwrite=True)
    for ev in (summary["before"], summary["after"]):
        assert "reward/code" in ev and "reward/r1_format" in ev  # the run's rubric judged the evaluation
        assert ev["verifier_errors"] == 0  # the sandbox scored every completion
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in steps if "score_s" in m]
    assert len(train_steps) == 2 and all(m["verifier_error_rate"] == 0 for m in train_steps)
    for key in ("generate_s", "score_s", "score_wait_s", "score_hidden_s", "learn_s", "sync_s"):
        assert key in train_steps[-1]
    assert {"score_hidden_frac", "score_hidden_share"} & set(train_steps[-1])
    assert "pyfunc" in (tmp_path / "run" / "config.yaml").read_text()
    assert "- verifier: code" in (tmp_path / "run" / "config.yaml").read_text()

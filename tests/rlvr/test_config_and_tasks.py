import json
import subprocess
import sys

import pytest
import yaml

from rlvr.config import ConfigError, PretrainConfig, TrainConfig, load_config
from rlvr.tasks import ArithTask, load_task, render, split_of
from rlvr.tasks.gsm8k import GSM8KTask


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "c.yaml", "model: m\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key"):
        load_config(TrainConfig, path)


def test_wrong_type_and_bounds_are_named(tmp_path):
    path = write(tmp_path, "c.yaml", "model: m\nsampling:\n  n: many\n")
    with pytest.raises(ConfigError, match=r"sampling\.n"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"algorithm\.clip_eps_low"):
        load_config(TrainConfig, None, ["model=m", "algorithm.clip_eps_low=-1"])


def test_missing_file_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: 'nope.yaml'"):
        load_config(TrainConfig, "nope.yaml")
    cfg = load_config(TrainConfig, None, ["model=m", "train.steps=7", "optim.lr=3e-5", "engine.kind=hf"])
    assert (cfg.train.steps, cfg.optim.lr, cfg.engine.kind) == (7, 3e-5, "hf")
    with pytest.raises(ConfigError, match=r"task\.path: no such file or directory 'missing.jsonl'"):
        load_config(TrainConfig, None, ["model=m", "task.kind=gsm8k", "task.path=missing.jsonl"])


def test_shipped_configs_validate():
    load_config(PretrainConfig, "configs/tiny_pretrain.yaml")
    load_config(TrainConfig, "configs/tiny_r1zero.yaml")


def test_arith_splits_are_disjoint_and_seeded():
    cfg = ArithTask(train_size=500, test_size=100)
    a, b = load_task(cfg), load_task(cfg)
    assert a.train == b.train
    train_q, test_q = {r["question"] for r in a.train}, {r["question"] for r in a.test}
    assert len(train_q) == 500 and len(test_q) == 100 and not train_q & test_q
    assert all(split_of(q, cfg.test_fraction) == "test" for q in test_q)
    for row in a.test:
        prompt = render(row["question"], cfg)
        assert prompt.endswith("<think>") and row["question"] in prompt
        # the reference is the left-to-right value of the chain
        expr = row["question"].removeprefix("Compute ").removesuffix(".")
        total, num, op = 0, "", "+"
        for ch in expr + "+":
            if ch.isdigit():
                num += ch
            else:
                total = total + int(num) if op == "+" else total - int(num)
                num, op = "", ch
        assert str(total) == row["answer"]


def test_pretraining_corpus_excludes_test_problems():
    from rlvr.pretrain import build_corpus

    cfg = PretrainConfig()
    cfg.corpus.num_docs = 3000
    test_q = {r["question"] for r in load_task(cfg.task).test}
    docs = build_corpus(cfg)
    def question(doc: str) -> str:  # R1 documents quote it; practice documents start with the chain
        return doc.split("User: ")[1].split("\n")[0] if "User: " in doc else "Compute " + doc.split(":")[0] + "."

    seen = {question(d) for d in docs}
    assert not seen & test_q
    assert any("</think> <answer>" in d for d in docs) and any("quick guess" in d for d in docs)


def test_file_task_with_column_mapping(tmp_path):
    rows = [{"q": f"What is {i}+1?", "a": f"{i} + 1 = {i + 1} #### {i + 1}"} for i in range(60)]
    path = write(tmp_path, "gsm.jsonl", "\n".join(json.dumps(r) for r in rows))
    cfg = GSM8KTask(path=path, columns={"question": "q", "answer": "a"}, test_fraction=0.2)
    data = load_task(cfg)
    assert len(data.train) + len(data.test) == 60 and data.test and data.train
    assert all(split_of(r["question"], 0.2) == "test" for r in data.test)  # the hash split, not a shuffle
    assert all(r["answer"] == str(int(r["question"].split()[2].split("+")[0]) + 1) for r in data.train)
    assert "held out" in data.notes[0] and "60 rows" in data.notes[0]


def test_row_without_reference_names_the_row(tmp_path):
    rows = [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}, {"q": "3+3"}]
    path = write(tmp_path, "bad.jsonl", "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"row 2 has no 'answer' \(column 'a'"):
        load_task(GSM8KTask(path=path, columns={"question": "q", "answer": "a"}))


def test_missing_model_dir_is_named(tmp_path):
    from rlvr.cli import main

    code = main(["train", "--config", "configs/tiny_r1zero.yaml", f"model={tmp_path}/nowhere"])
    assert code == 2


@pytest.mark.e2e  # four interpreters in subprocesses
def test_cli_help_does_not_import_torch():
    code = ("import sys; from rlvr.cli import build_parser; build_parser();"
            "heavy = [m for m in ('torch', 'vllm', 'transformers', 'datasets') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    for args in (["--help"], ["train", "--help"], ["pretrain", "--help"]):
        out = subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True, check=True)
        assert "usage: rlvr" in out.stdout


def test_bad_task_input_is_one_clear_error_at_load_time(tmp_path):
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(30)]
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows))
    from rlvr.tasks.math import MathTask

    with pytest.raises(ValueError, match=r"task\.columns\.question: column 'prompt' does not exist in .*m\.jsonl.*"
                                         r"columns: \['answer', 'problem'\]"):
        load_task(MathTask(path=path, columns={"question": "prompt"}))
    with pytest.raises(ConfigError, match=r"task\.kind: unknown task kind 'gsm9k'; known: arith, code, countdown"):
        load_config(TrainConfig, None, ["model=m", "task.kind=gsm9k"])


def test_a_row_missing_what_its_verifier_needs_names_row_and_key(tmp_path):
    from verifiers import get

    rows = [{"question": f"Q{i}", "answer": str(i)} for i in range(30)]
    rows[7] = {"question": "Q7"}
    path = write(tmp_path, "h.jsonl", "\n".join(json.dumps(r) for r in rows))
    from rlvr.tasks.hf import HFTask

    cfg = HFTask(path=path, columns={"question": "question", "answer": "answer"}, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"row \d+ lacks 'answer', which verifier 'math' needs"):
        load_task(cfg, [get("math")])


def test_chat_format_without_a_chat_template_is_an_error(micro_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    assert not getattr(tok, "chat_template", None)
    with pytest.raises(ValueError, match=r"task\.format='chat' needs a tokenizer with a chat template"):
        render("What is 1+1?", ArithTask(format="chat"), tok)


@pytest.mark.e2e  # the CLI in a subprocess: seconds of imports (the unit tier stays in-process)
def test_overrides_after_an_option_still_count_and_unknown_options_are_refused():
    out = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml",
                          "--print-config", "--overwrite", "cluster.rollout_workers=2", "train.steps=7"],
                         capture_output=True, text=True, check=True)
    cfg = yaml.safe_load(out.stdout)
    assert cfg["cluster"]["rollout_workers"] == 2 and cfg["train"]["steps"] == 7
    bad = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", "--print-config", "--bogus"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr

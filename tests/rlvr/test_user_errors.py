"""The last silent cases and tracebacks a new user hit (issue 24 items 3 and 4), and how the CLI tells
a user's mistake from a bug (issue 25 step 7): each silent case is now an error naming the row, field
or path (or correct behaviour), each traceback one `error:` line, while an unexpected exception keeps
its traceback. Models are random-init micro models: nothing here depends on what a model learned."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.config import ConfigError, TrainConfig, load_config
from rlvr.errors import DataError, StorageError, is_user_error
from rlvr.tasks import load_task, prepare_rows

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random-init micro Llama with the project's tokenizer (seconds to build)."""
    from rlvr.archs import build_model, micro_config
    from rlvr.pretrain import local_tokenizer

    tok = local_tokenizer()
    return build_model(micro_config("llama", len(tok)), tok, tmp_path_factory.mktemp("user-errors") / "model")


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_args(model: str, run_dir: Path, *more: str) -> list[str]:
    return ["train", "--config", "configs/tiny_r1zero.yaml", f"model={model}", f"run_dir={run_dir}", "engine.kind=hf",
            "train.steps=2", "train.prompts_per_step=2", "sampling.n=2", "sampling.max_tokens=8", "eval.num_prompts=2",
            "eval.k=1", "eval.max_tokens=4", "logging.progress=false", "logging.tensorboard=false",
            "checkpoint.every=1", "train.threads=1", "alarms.zero_reward_steps=0", *more]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- issue 24 item 3: silent cases -----------------------------------------------------------------

def test_every_unmatched_lora_target_is_an_error_before_weights_load(tiny_model, tmp_path, capsys):
    pytest.importorskip("peft")
    from rlvr.lora import check_targets

    with pytest.raises(ConfigError, match=r"lora\.target_modules: \['q_prj'\] matches no linear layer .*its linear "
                                          r"layers are named: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        check_targets(tiny_model, ["q_prj", "v_proj"])  # v_proj alone used to train, with no word
    with pytest.raises(ConfigError, match=r"\['q_prj', 'v_prj'\] match no linear layer"):
        check_targets(tiny_model, ["q_prj", "v_prj", "k_proj"])
    assert len(check_targets(tiny_model, ["self_attn.q_proj", "v_proj"])) == 4  # peft's dotted suffixes match
    run = tmp_path / "run"
    assert main(run_args(tiny_model, run, "lora.target_modules=[q_prj,v_proj]")) == 2
    assert "'q_prj'" in one_error_line(capsys.readouterr().err)
    assert not run.exists()  # refused before the run directory, let alone a model


def gsm_rows(n: int = 40) -> list[dict]:
    return [{"question": f"Tom has {i} apples and buys 3 more. How many now?", "answer": f"{i} + 3 = {i + 3}\n#### {i + 3}"}
            for i in range(n)]


def test_gsm8k_answer_without_hashes_is_a_load_error_naming_the_row(tmp_path):
    from rlvr.tasks.gsm8k import GSM8KTask

    rows = gsm_rows()
    rows[7]["answer"] = "The answer is 8 clips, 3 left"  # the math verifier would have read 3
    with pytest.raises(DataError, match=r"row 7: the answer \(column 'answer'\) has no '####' .*8 clips, 3 left"):
        load_task(GSM8KTask(path=jsonl(tmp_path / "g.jsonl", rows)))
    rows[7]["answer"] = "1,234"  # a bare number needs no '####'
    splits = load_task(GSM8KTask(path=jsonl(tmp_path / "g.jsonl", rows)))
    assert "1234" in [r["answer"] for r in splits.train + splits.test]


def chat_tokenizer(model_dir: str, with_template: bool = True):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = CHAT_TEMPLATE if with_template else None
    return tok


def test_trl_message_prompts_go_through_the_chat_template(tiny_model, tmp_path):
    from rlvr.tasks.gsm8k import GSM8KTask

    rows = [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in gsm_rows()]
    path = jsonl(tmp_path / "trl.jsonl", rows)
    task = GSM8KTask(path=path, columns={"question": "prompt"}, format="chat", system_prompt="Think first.")
    splits = load_task(task)
    prepare_rows(splits, task, chat_tokenizer(tiny_model), 10_000)
    row = splits.train[0]
    assert row["question"] == [{"role": "user", "content": row["question"][0]["content"]}]
    assert row["prompt_text"] == (f"<|system|>Think first.\n<|user|>{row['question'][0]['content']}\n<|assistant|>")
    assert "'role'" not in row["prompt_text"]  # never str()-ed into the template
    with pytest.raises(DataError, match=r"row 0: 'question' \(column 'prompt'\) holds chat messages.*task\.format=chat"):
        load_task(task.model_copy(update={"format": "raw"}))
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        prepare_rows(load_task(task), task, chat_tokenizer(tiny_model, with_template=False), 10_000)
    # without a mapping, the error points at the column that holds the messages
    with pytest.raises(DataError, match=r"row 0 has no 'question'.*'prompt' column holds chat messages.*"
                                        r"task\.columns\.question=prompt"):
        load_task(GSM8KTask(path=path, format="chat"))


def test_trl_messages_conversation_is_cut_before_the_reply_which_becomes_the_answer(tiny_model, tmp_path):
    from rlvr.tasks.gsm8k import GSM8KTask

    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["question"]},
                          {"role": "assistant", "content": r["answer"]}]} for r in gsm_rows()]
    task = GSM8KTask(path=jsonl(tmp_path / "msgs.jsonl", rows), columns={"question": "messages"}, format="chat")
    splits = load_task(task)
    prepare_rows(splits, task, chat_tokenizer(tiny_model), 10_000)
    row = splits.train[0]
    assert [m["role"] for m in row["question"]] == ["system", "user"]
    assert row["answer"] == str(int(row["question"][1]["content"].split()[2]) + 3)  # after '####' of the reply
    assert row["prompt_text"].startswith("<|system|>Be brief.\n<|user|>")  # its own system turn, not ours
    rows[3]["messages"] = rows[3]["messages"][:1]  # a conversation with no user turn
    with pytest.raises(DataError, match=r"row 3: the chat messages of 'question' .* end with a 'system' turn"):
        load_task(task.model_copy(update={"path": jsonl(tmp_path / "bad.jsonl", rows)}))


def _gsm8k_run(model, tmp_path, engine: str):
    """A run directory as `rlvr train` leaves it: ``final/`` (``model``) beside the ``config.yaml`` of a gsm8k
    run of 3 held-out rows on ``engine``."""
    from rlvr.config import config_yaml

    run = tmp_path / "run"
    shutil.copytree(model, run / "final")
    path = jsonl(tmp_path / "g.jsonl", gsm_rows())
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
        "model=base", f"run_dir={run}", "task.kind=gsm8k", f"task.path={path}", "task.test_size=3",
        "rewards=[{verifier: math}]", f"engine.kind={engine}", "eval.k=1", "eval.max_tokens=4"])
    (run / "config.yaml").write_text(config_yaml(cfg))
    return run


def test_eval_of_a_run_output_reads_the_runs_config(tiny_model, tmp_path, capsys):
    run = _gsm8k_run(tiny_model, tmp_path, "hf")
    assert main(["eval", "--model", str(run / "final"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"using {run / 'config.yaml'}, the config of the run" in err
    assert json.loads(out)["num_prompts"] == 3.0  # the run's gsm8k held-out rows, not arith's 200


def test_eval_engine_of_another_kind_over_a_runs_config(tiny_model, tmp_path, capsys):
    """A static run's config.yaml spells out the static engine's own fields (kv_cache_gib, compile, refill);
    `rlvr eval --engine hf` of its output left them in, and hf refused them as unknown keys."""
    run = _gsm8k_run(tiny_model, tmp_path, "static")
    assert "kv_cache_gib" in (run / "config.yaml").read_text()
    assert main(["eval", "--model", str(run / "final"), "--engine", "hf", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "--engine hf: left out" in err and "kv_cache_gib" in err
    assert json.loads(out)["num_prompts"] == 3.0


def test_verify_names_a_row_whose_answer_is_null(tmp_path, capsys):
    data = jsonl(tmp_path / "v.jsonl", [{"completion": "x = 3", "answer": "3"}, {"completion": "4", "answer": None}])
    assert main(["verify", data, "--no-progress"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {data}:2: 'answer' is null, which verifier 'math' needs to score it (give it, or drop the row)")


def test_stdio_code_row_with_unequal_inputs_and_outputs_is_a_load_error(tmp_path):
    from rlvr.tasks.code import CodeTask

    rows = [{"question": f"Print {i} times the number read.", "inputs": ["2\n"], "outputs": [f"{2 * i}\n"]}
            for i in range(30)]
    rows[4]["inputs"] = ["1\n", "2\n"]
    with pytest.raises(DataError, match=r"row 4: its stdin/stdout tests cannot run: task has 2 inputs and 1 outputs"):
        load_task(CodeTask(path=jsonl(tmp_path / "c.jsonl", rows)))
    rows[4] = {"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": []})}
    with pytest.raises(DataError, match=r"row 4: .*1 inputs and 0 outputs"):
        load_task(CodeTask(path=jsonl(tmp_path / "c.jsonl", rows)))


# ---- issue 24 item 4: one sentence instead of a traceback ------------------------------------------

def test_disk_full_during_a_checkpoint_names_the_file_and_keeps_the_last_checkpoint(tiny_model, tmp_path,
                                                                                     monkeypatch, capsys):
    from rlvr.checkpoint import list_checkpoints, load_checkpoint

    run = tmp_path / "run"
    first = run / "checkpoints" / "step_000001"
    real_write = os.write

    def full_after_first_checkpoint(fd, data):  # the disk fills once step 1's checkpoint is written
        if first.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_first_checkpoint)
    assert main(run_args(tiny_model, run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoint step 2: No space left on device: " in line
    assert str(run / "checkpoints" / ".tmp-step_000002" / "learner.pt") in line and str(first) in line
    assert list_checkpoints(run) == [first] and not list((run / "checkpoints").glob(".tmp-*"))
    tensors, state = load_checkpoint(first)  # intact
    assert state["step"] == 1 and "model" in tensors["learner"]
    monkeypatch.setattr(os, "write", real_write)  # space freed: the run continues from step 1
    assert main(["train", "--resume", str(run)]) == 0
    assert [p.name for p in list_checkpoints(run)][-1] == "step_000002"


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write in: a read-only one for a normal user; as root (which
    passes any mode check) a system directory that refuses new files, such as /sys."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no directory here refuses a write")


def test_read_only_run_dir_is_one_error_before_any_model_loads(tmp_path, capsys):
    where = unwritable_dir(tmp_path)
    assert main(run_args(str(tmp_path / "no-model-needed"), where / "run")) == 2  # the model is never looked at
    line = one_error_line(capsys.readouterr().err)
    assert f"run_dir {str(where / 'run')!r}: cannot write in {str(where)!r}" in line


def test_wandb_without_a_login_is_one_error_before_data_loads(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    from rlvr.trackers import wandb_can_log

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DISABLED", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com login u password p\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert main(run_args(str(tmp_path / "nowhere"), tmp_path / "run", "logging.report_to=[wandb]")) == 2
    assert "'wandb' has no login" in one_error_line(capsys.readouterr().err)
    netrc.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    assert wandb_can_log()
    netrc.write_text("")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_can_log()


def test_missing_tracker_package_is_one_error_before_the_model_is_looked_at(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    assert main(run_args(str(tmp_path / "nowhere"), tmp_path / "run", "logging.report_to=[trackio]")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'trackio' needs the `trackio` package" in line and "pip install -e '.[trackio]'" in line


def test_bench_on_a_model_without_a_tokenizer_names_it(tiny_model, tmp_path, capsys):
    model = tmp_path / "no-tok"
    shutil.copytree(tiny_model, model)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model / f).unlink()
    assert main(["bench", "rollouts", "--model", str(model)]) == 2
    assert f"--model: {str(model)!r} has no tokenizer" in one_error_line(capsys.readouterr().err)


def test_empty_question_is_named_as_empty(tmp_path):
    from rlvr.tasks.gsm8k import GSM8KTask

    rows = gsm_rows()
    rows[5]["question"] = "  "
    with pytest.raises(DataError, match=r"row 5 has an empty 'question' \(column 'question'\)"):
        load_task(GSM8KTask(path=jsonl(tmp_path / "g.jsonl", rows)))
    del rows[5]["question"]
    with pytest.raises(DataError, match=r"row 5 has no 'question'"):
        load_task(GSM8KTask(path=jsonl(tmp_path / "g.jsonl", rows)))


def test_task_name_says_task_kind_replaced_it():
    with pytest.raises(ConfigError, match=r"task\.name: renamed task\.kind: write task\.kind=gsm8k"):
        load_config(TrainConfig, None, ["model=m", "task.name=gsm8k"])
    with pytest.raises(ConfigError, match=r"task\.name: unknown key for task\.kind=gsm8k \(task\.name was renamed "
                                          r"task\.kind\)"):
        load_config(TrainConfig, None, ["model=m", "task.kind=gsm8k", "task.path=configs", "task.name=x"])


def test_resume_with_overwrite_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "give one of them" in one_error_line(capsys.readouterr().err)


# ---- issue 25 step 7: named errors are one line, anything else keeps its traceback -----------------

def test_named_error_is_one_line_and_debug_adds_the_traceback(capsys):
    assert main(["train", "model=m", "train.stepz=1"]) == 2
    err = capsys.readouterr().err
    one_error_line(err)
    assert "train.stepz: unknown key" in err
    assert main(["train", "model=m", "train.stepz=1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and err.count("error:") == 1
    assert main(["--debug", "train", "model=m", "train.stepz=1"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.e2e  # the CLI in a subprocess: seconds of imports (the unit tier stays in-process)
def test_unexpected_exception_keeps_its_traceback(tmp_path):
    """A KeyError from deep code is a bug: no `error:` line, its traceback, exit status 1."""
    code = ("import sys, rlvr.models\n"
            "def resolve(name, field='model'):\n    raise KeyError('deep bug')\n"
            "rlvr.models.resolve_model = resolve\n"
            "from rlvr.cli import main\nsys.exit(main())\n")
    out = subprocess.run([sys.executable, "-c", code, "eval", "--model", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "KeyError: 'deep bug'" in out.stderr and "error:" not in out.stderr


def test_which_errors_are_named():
    from rlvr.stages.recipe import StageFailed

    def wrapped(cause: BaseException) -> StageFailed:
        try:
            raise StageFailed("stage 'sft' failed") from cause
        except StageFailed as exc:
            return exc

    assert is_user_error(ConfigError("x")) and is_user_error(DataError("x"))
    assert not is_user_error(KeyError("x")) and not is_user_error(ValueError("x"))
    assert is_user_error(wrapped(DataError("row 3"))) and not is_user_error(wrapped(KeyError("bug")))
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/metrics.jsonl")
    assert is_user_error(full) and not is_user_error(OSError(errno.EBADF, "bad fd"))
    assert is_user_error(StorageError("checkpoint step 2: ...", errno.ENOSPC, "/x"))

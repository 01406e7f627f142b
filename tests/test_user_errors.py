"""The last silent cases and tracebacks a new user hit (issue 24 items 3 and 4), and how the CLI tells
a user's mistake from a bug (issue 25 step 7): each silent case is now an error naming the row, field
or path (or correct behaviour), each traceback one `error:` line, while an unexpected exception keeps
its traceback. Models are random-init micro models: nothing here depends on what a model learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.errors import DataError
from rlvr.tasks import load_task, prepare_rows

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random-init micro Llama with the project's tokenizer (seconds to build)."""
    from rlvr.archs import build_model, local_tokenizer, micro_config

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

def test_empty_question_is_named_as_empty(tmp_path):
    from rlvr.tasks.gsm8k import GSM8KTask

    rows = gsm_rows()
    rows[5]["question"] = "  "
    with pytest.raises(DataError, match=r"row 5 has an empty 'question' \(column 'question'\)"):
        load_task(GSM8KTask(path=jsonl(tmp_path / "g.jsonl", rows)))
    del rows[5]["question"]
    with pytest.raises(DataError, match=r"row 5 has no 'question'"):
        load_task(GSM8KTask(path=jsonl(tmp_path / "g.jsonl", rows)))


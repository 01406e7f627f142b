"""Data for the stages, made from the task's *training* split only.

* SFT traces: a correct step-by-step response to the task's own prompt (``render``), made
  procedurally (arith: one operation per step, as in the pretraining corpus; countdown: the
  generating expression) or taken from a row's ``solution`` (gsm8k keeps the worked solution).
* Mid-training text: the same problems as plain worked text, without the R1 prompt or the
  ``<think>``/``<answer>`` format (arith: ``20+6-2: 20+6=26 26-2=24``).
* Preference pairs (``sample_pairs``): on-policy, the current model sampled ``n`` times per
  prompt, scored by the task's verifier; chosen = a correct completion, rejected = a wrong one
  from the same prompt.

A training row whose question is also a held-out question is dropped (sources that ship their
own test split could overlap), so no held-out problem enters any stage's data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from rlvr.errors import DataError
from rlvr.tasks import Row, Splits, TaskBase, load_task, render
from rlvr.tasks.arith import ArithProblem, reasoning_steps

_ARITH = re.compile(r"^Compute (\d+)((?:[+-]\d+)+)\.$")


def arith_problem(question: str) -> ArithProblem:
    m = _ARITH.match(question)
    if m is None:
        raise ValueError(f"not an arith question: {question!r}")
    ops = tuple((op, int(d)) for op, d in re.findall(r"([+-])(\d+)", m.group(2)))
    return ArithProblem(int(m.group(1)), ops)


def _reasoning_and_answer(row: Row, kind: str) -> tuple[str, str]:
    """(step-by-step reasoning, final answer) of a training row."""
    if kind == "arith":
        p = arith_problem(row["question"])
        return reasoning_steps(p), str(p.answer)
    if kind == "countdown" and row.get("solution"):
        return f"{row['solution']} = {row['target']}", str(row["solution"])
    if row.get("solution"):
        text = str(row["solution"])
        reasoning = text.rsplit("####", 1)[0].strip() if "####" in text else text.strip()
        return " ".join(reasoning.split()), str(row["answer"])
    raise DataError(f"task {kind!r}: row has no solution to make a trace from (procedural kinds: arith, countdown; "
                    "data kinds need a 'solution' column, e.g. task.columns.solution=COLUMN)")


def training_rows(task: TaskBase, limit: int, seed: int) -> tuple[list[Row], Splits]:
    """Up to ``limit`` training rows (shuffled by ``seed``), none sharing a question with the held-out split."""
    splits = load_task(task)
    held_out = {r["question"] for r in splits.test}
    rows = [r for r in splits.train if r["question"] not in held_out]
    random.Random(seed).shuffle(rows)
    return rows[:limit], splits


def _opening(task: TaskBase) -> str:
    """The R1 format's opening: already in a raw R1 prompt, else the trace writes it."""
    return "" if task.format == "raw" and task.template.rstrip().endswith("<think>") else "<think>"


def sft_examples(task: TaskBase, rows: list[Row], tokenizer: Any) -> list[dict[str, str]]:
    """Prompt-completion examples (TRL's format): the task's prompt, then a correct R1 response."""
    out = []
    for row in rows:
        reasoning, answer = _reasoning_and_answer(row, task.kind)
        completion = f"{_opening(task)} {reasoning} </think> <answer>{answer}</answer>"
        out.append({"prompt": render(row["question"], task, tokenizer), "completion": completion})
    return out


def midtrain_texts(task: TaskBase, rows: list[Row]) -> list[dict[str, str]]:
    """Plain worked text (TRL's language-modelling format), no prompt template and no answer tags."""
    out = []
    for row in rows:
        reasoning, _ = _reasoning_and_answer(row, task.kind)
        if task.kind == "arith":
            text = row["question"].removeprefix("Compute ").rstrip(".") + ": " + reasoning
        else:
            text = f"{row['question']}\n{reasoning}"
        out.append({"text": text})
    return out


def _judged_right(score: Any) -> bool:
    """Correct by the verifier's own verdict; a verifier without one (``correct`` is None) by its reward."""
    return bool(score.correct) if score.correct is not None else score.reward > 0


class NoPairsError(ValueError):
    """Every sampled prompt was all right or all wrong: no preference pair can be formed."""


def sample_pairs(engine: Any, rows: list[Row], verifier: Any, n: int, temperature: float, max_tokens: int,
                 seed: int, where: str, tokenizer: Any = None,
                 keep: Callable[[Any], bool] = lambda c: c.finish_reason != "length") -> list[dict[str, Any]]:
    """On-policy pairs: per prompt, the first correct and the first wrong finished completion.

    Rows need ``prompt_text`` and ``prompt_ids`` (``prepare_rows``). Returns dicts with
    ``prompt``, ``chosen``, ``rejected`` (text, TRL's format) and their token ids."""
    from rlvr.scoring import Scorer, generate_and_score
    from rollouts import SamplingConfig
    from verifiers import Rubric

    scorer = Scorer(Rubric([(verifier, 1.0)]), workers=2)
    try:
        groups, scores, _ = generate_and_score(
            engine, rows, SamplingConfig(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed), scorer)
    finally:
        scorer.close()
    pairs, all_right, all_wrong = [], 0, 0
    for row, group, group_scores in zip(rows, groups, scores):
        done = [(c, s) for c, s in zip(group.completions, group_scores) if keep(c) and s.error is None]
        right = [c for c, s in done if _judged_right(s)]
        wrong = [c for c, s in done if not _judged_right(s)]
        if right and wrong:
            pairs.append({"prompt": row["prompt_text"], "chosen": right[0].text, "rejected": wrong[0].text,
                          "prompt_ids": list(row["prompt_ids"]), "chosen_ids": list(right[0].token_ids),
                          "rejected_ids": list(wrong[0].token_ids)})
        elif right:
            all_right += 1
        else:
            all_wrong += 1
    if not pairs:
        raise NoPairsError(
            f"{where}: no preference pairs: tried {len(rows)} prompts with {n} samples each; the model got "
            f"{all_right} prompts right every time and {all_wrong} wrong every time (or cut off), so no prompt had "
            "both a correct and a wrong completion (more samples, pairs.n, or a higher pairs.temperature may help)")
    return pairs

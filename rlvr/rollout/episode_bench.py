"""Multi-turn generation throughput (``rlvr bench rollouts --turns 3``): episodes per second of each
engine over ``turns`` model turns, beside the same engine's one-turn figure.

Every episode runs the ``guess_number`` environment on a secret no guess can hit, so each one takes
all ``turns`` turns unless the model's context or a turn's EOS-less cut ends it: the observations
("higher"/"lower") are appended as ids and every later turn continues from its episode's whole token
prefix, as in training (rlvr.envs.runner). ``episodes = prompts x n``; one seed per draw.
"""

from __future__ import annotations

import time
from typing import Any

QUESTION = "Compute 12+7-3."


def bench_episodes(model_dir: str, kinds: list[str], prompts: int, n: int, turns: int, turn_tokens: int,
                   dtype: str = "float32") -> list[dict[str, Any]]:
    """One row per engine kind: episodes/s and model tokens/s over one turn and over ``turns`` turns."""
    from transformers import AutoTokenizer

    from rlvr.envs import hf_encoder
    from rlvr.envs.guess_number import GuessNumberConfig
    from rlvr.envs.runner import run_episodes
    from rlvr.envs.single_turn import SingleTurnConfig
    from rlvr.models import context_length
    from rlvr.tasks.base import R1_TEMPLATE
    from rollouts import SamplingConfig
    from rollouts.config import engine_config

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tokenizer(R1_TEMPLATE.format(question=QUESTION), add_special_tokens=False)["input_ids"]
    rows = [{"prompt_ids": prompt_ids, "prompt_text": QUESTION, "secret": -(10**12)} for _ in range(prompts)]
    sampling = SamplingConfig(n=n, temperature=1.0, max_tokens=turn_tokens, seed=0)
    envs = {1: SingleTurnConfig(), turns: GuessNumberConfig(max_turns=turns)}
    context, out = context_length(model_dir), []
    for kind in kinds:
        engine = engine_config(kind, dtype=dtype).build(model_dir)
        try:
            encode = hf_encoder(engine.tokenizer)
            run_episodes(engine, rows[:2], sampling, envs[turns], encode, context=context)  # warm-up: compile, caches
            row: dict[str, Any] = {"engine": kind, "dtype": dtype, "episodes": prompts * n, "turns": turns}
            for t, env in envs.items():
                t0 = time.perf_counter()
                groups = run_episodes(engine, rows, sampling, env, encode, context=context)
                seconds = time.perf_counter() - t0
                episodes = [e for g in groups for e in g]
                tag = "one_turn" if t == 1 else f"{turns}_turns"
                row[f"{tag}_episodes_per_s"] = len(episodes) / seconds
                row[f"{tag}_model_tokens_per_s"] = sum(e.model_tokens() for e in episodes) / seconds
                row[f"{tag}_turns_mean"] = sum(e.turns for e in episodes) / len(episodes)
            out.append(row)
        finally:
            engine.close()
    return out


def format_episode_table(rows: list[dict[str, Any]]) -> str:
    turns = rows[0]["turns"] if rows else 0
    head = (f"| engine | dtype | episodes | one turn: episodes/s | tokens/s | {turns} turns: episodes/s | tokens/s | "
            "turns taken |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['engine']} | {r['dtype']} | {r['episodes']} | {r['one_turn_episodes_per_s']:.1f} | "
             f"{r['one_turn_model_tokens_per_s']:,.0f} | {r[f'{turns}_turns_episodes_per_s']:.1f} | "
             f"{r[f'{turns}_turns_model_tokens_per_s']:,.0f} | {r[f'{turns}_turns_turns_mean']:.2f} |" for r in rows]
    return "\n".join([head, *lines])

"""Held-out evaluation: greedy pass@1, sampled pass@k, format rate, response length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rollouts import Engine, SamplingConfig
from verifiers import get as get_verifier
from verifiers import score_batch


def evaluate(
    engine: Engine,
    rows: Sequence[dict[str, Any]],
    k: int = 8,
    temperature: float = 1.0,
    max_tokens: int = 64,
    seed: int = 1234,
    answer_verifier: str = "arith",
) -> dict[str, float]:
    """Metrics on ``rows`` (each with ``prompt`` and ``answer``)."""
    prompts = [r["prompt"] for r in rows]
    checker, fmt = get_verifier(answer_verifier), get_verifier("r1_format")

    greedy = engine.generate(prompts, SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed))
    g_text = [g.completions[0].text for g in greedy]
    g_scores = score_batch(checker, g_text, rows)
    g_format = score_batch(fmt, g_text, rows)
    metrics = {
        "pass@1": sum(bool(s.correct) for s in g_scores) / len(rows),
        "format_rate": sum(s.reward for s in g_format) / len(rows),
        "response_len": sum(len(g.completions[0].token_ids) for g in greedy) / len(rows),
        "errors": float(sum(s.error is not None for s in g_scores)),
    }
    if k > 1:
        sampled = engine.generate(prompts, SamplingConfig(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed + 1))
        texts = [c.text for g in sampled for c in g.completions]
        tasks = [row for row in rows for _ in range(k)]
        scores = score_batch(checker, texts, tasks)
        hits = [any(bool(s.correct) for s in scores[i * k : (i + 1) * k]) for i in range(len(rows))]
        metrics[f"pass@{k}"] = sum(hits) / len(rows)
        metrics[f"sampled_acc@{k}"] = sum(bool(s.correct) for s in scores) / len(scores)
    return metrics

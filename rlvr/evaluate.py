"""Held-out evaluation with the run's own rubric: greedy pass@1, sampled pass@k, format rate
(greedy, and of the pass@k samples), response length, and the verifier error rate (timeouts,
crashes, sandbox errors), kept apart from wrong answers.

``correct`` comes from the rubric (its first verifier that judges correctness, e.g. ``math``
or ``code``); the format rate is the strict R1 check, computed whatever the rubric rewards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rollouts import Engine, SamplingConfig
from verifiers import Rubric
from verifiers import get as get_verifier


def evaluate(
    engine: Engine,
    rows: Sequence[Mapping[str, Any]],
    rubric: Rubric,
    k: int = 8,
    temperature: float = 1.0,
    max_tokens: int = 64,
    seed: int = 1234,
    workers: int = 4,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics on ``rows`` (each with ``prompt_ids`` and what the rubric's verifiers need)."""
    from tqdm import tqdm

    from rlvr.scoring import Scorer, generate_and_score

    if not rows:
        raise ValueError("evaluate: no held-out rows")
    fmt = get_verifier("r1_format")
    scorer = Scorer(rubric, workers)
    bar = tqdm(total=len(rows) * (2 if k > 1 else 1), desc="eval", unit="prompt", disable=not progress,
               mininterval=1, leave=False)
    try:
        greedy, g_scores, _ = generate_and_score(
            engine, rows, SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed), scorer)
        bar.update(len(rows))
        g_text = [g.completions[0].text for g in greedy]
        first = [s[0] for s in g_scores]
        errors = sum(s.error is not None for s in first)
        metrics = {
            "pass@1": sum(bool(s.correct) for s in first) / len(rows),
            "format_rate": sum(fmt.score(t, {}).reward for t in g_text) / len(rows),
            "response_len": sum(len(g.completions[0].token_ids) for g in greedy) / len(rows),
            "verifier_errors": float(errors),
            "verifier_error_rate": errors / len(rows),
            "num_prompts": float(len(rows)),
        }
        for verifier, _ in rubric.parts:  # which verifiers judged this evaluation, and their mean reward
            metrics[f"reward/{verifier.name}"] = sum(s.metrics.get(verifier.name, 0.0) for s in first) / len(rows)
        if k > 1:
            sampled, s_scores, _ = generate_and_score(
                engine, rows, SamplingConfig(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed + 1), scorer)
            bar.update(len(rows))
            hits = [any(bool(s.correct) for s in group) for group in s_scores]
            flat = [s for group in s_scores for s in group]
            metrics[f"pass@{k}"] = sum(hits) / len(rows)
            metrics[f"sampled_acc@{k}"] = sum(bool(s.correct) for s in flat) / len(flat)
            # the strict R1 format of the T>0 samples: a base whose greedy answer is always well formed
            # can still sample malformed completions, and what SFT or RL does to that shows here
            metrics["sampled_format_rate"] = (sum(fmt.score(c.text, {}).reward for g in sampled for c in g.completions)
                                              / len(flat))
            metrics["sampled_error_rate"] = sum(s.error is not None for s in flat) / len(flat)
    finally:
        bar.close()
        scorer.close()
    return metrics

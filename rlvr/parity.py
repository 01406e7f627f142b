"""Engine/learner log-prob parity: a probe before the first step, and the gate on every fresh batch.

The rollout engine and the learner compute the same model with different kernels. Their log-probs
of the sampled tokens agree to ~1e-5 nats in float32; when they do not, the engine is computing
something else (kernels built for another CPU or thread count, state an earlier engine left in
the process, a weight the sync missed) and every sample it draws is off-policy garbage. The probe
samples a few tokens of two prompts right after the engine is built (or resumed) and compares
them with the learner's recomputation, so such an engine stops the run before the first
evaluation or step, with a sentence naming the engine instead of a collapsed run later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PROBE_PROMPTS = 2
PROBE_SAMPLES = 2
PROBE_TOKENS = 8
PROBE_SEED = 12_345


class LogprobParityError(RuntimeError):
    """The rollout engine's log-probs disagree with the learner's: training would be off-policy."""


def engine_label(cfg: Any) -> str:
    return (f"engine.kind={cfg.engine.kind}, engine.dtype={cfg.engine.dtype}, learner {cfg.train.dtype}, "
            f"sampling.temperature={cfg.sampling.temperature}, sampling.top_p={cfg.sampling.top_p}")


def probe(draw: Callable, policy_logp: Callable, rows: list[dict], cfg: Any, pad_id: int) -> dict[str, float]:
    """Sample ``PROBE_SAMPLES`` x ``PROBE_TOKENS`` tokens for ``PROBE_PROMPTS`` rows with ``draw(rows, sampling)``
    (the run's rollouts: ``(groups, scores, timings)``) and compare their log-probs with ``policy_logp(batch)``
    (the learner's); raises ``LogprobParityError`` past ``engine.max_logprob_diff``.

    The probe leaves the run's numbers as they were: its seeds are its own, it touches no global RNG, and
    its prompts are the rows' prompts without their first token, so no cached prefix of a real prompt
    (vLLM's prefix cache) is computed by the probe."""
    from rlvr.pipeline import ScoredGroup
    from rlvr.train.batch import build_batch
    from rollouts import SamplingConfig

    rows = [{**r, "prompt_ids": list(r["prompt_ids"][1:] or r["prompt_ids"])} for r in rows[:PROBE_PROMPTS]]
    sampling = SamplingConfig(n=PROBE_SAMPLES, temperature=1.0, max_tokens=PROBE_TOKENS,
                              seeds=[PROBE_SEED + i for i in range(len(rows))])
    groups, scores, _ = draw(rows, sampling)
    batch, _ = build_batch([ScoredGroup(r, g, s) for r, g, s in zip(rows, groups, scores)], pad_id, cfg.algorithm,
                           PROBE_TOKENS)
    learner_logp = policy_logp(batch)  # [B, T], 0 off-response
    worst = float(((learner_logp - batch.engine_logp).abs() * batch.response_mask).max())
    bound = cfg.engine.max_logprob_diff
    if not worst <= bound:  # NaN fails too
        raise LogprobParityError(
            f"start-up parity probe: the rollout engine's log-probs differ from the learner's by up to {worst:.3g} "
            f"nats on {int(batch.response_mask.sum())} sampled tokens of {len(rows)} prompts, before the first step "
            f"(engine.max_logprob_diff = {bound}; {engine_label(cfg)}). The engine computes different numbers from "
            "the same weights. Likely causes: state another engine left in this process (vLLM on CPU: engines "
            "built at different thread counts), kernels compiled or cached for another CPU or thread count (set "
            "TORCHINDUCTOR_CACHE_DIR to a fresh directory), or weights the engine did not load.")
    return {"probe_logp_diff_max": worst}


def check_step(metrics: dict[str, float], cfg: Any) -> None:
    """The gate on a fresh batch: the learner's first pass recomputes every sampled token's log-prob."""
    worst, bound = metrics["logp_diff_max"], cfg.engine.max_logprob_diff
    if worst > bound:
        raise LogprobParityError(
            f"engine/learner log-prob mismatch: max |delta| = {worst:.3g} nats > engine.max_logprob_diff = {bound} "
            f"({engine_label(cfg)}). "
            + ("A bfloat16 engine samples from different numbers than the float32 learner: use engine.dtype=float32, "
               "or keep bfloat16 with algorithm.is_cap set and a larger engine.max_logprob_diff."
               if cfg.engine.dtype != "float32" else
               "Both sides run float32, so the weights differ: check that the weight sync covers every parameter.")
        )

"""Held-out evaluation with the run's own rubric: greedy pass@1, sampled pass@k, format rate
(greedy, and of the pass@k samples), response length, and the verifier error rate (timeouts,
crashes, sandbox errors), kept apart from wrong answers.

``correct`` comes from the rubric (its first verifier that judges correctness, e.g. ``math``
or ``code``); the format rates are the rubric's own ``r1_format`` scores (absent when the rubric
does not check the format).

A run with an agent (``agent:``, rlvr.agents) is evaluated through its agent: every held-out row is
one agent session (greedy: the sessions' default temperature is 0; pass@k: ``k`` sessions at the
eval's temperature), so pass@1 is the agent's success, not the policy's on the bare prompt. Such an
evaluation also reports the agent's failures by kind (``agent/<kind>``, greedy sessions; a failed
session counts as not solved) and its model calls per session (``turns``, as an environment run does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rollouts import Engine, SamplingConfig
from verifiers import Rubric

FORMAT = "r1_format"  # the strict R1 format check: its score in a rubric is the format rate


def format_scores(rubric: Rubric, scores) -> list[float] | None:
    """The rubric's own ``r1_format`` reward of each score, or None when the rubric has no format check. A
    sample that was never scored (its environment or agent failed: no metrics) counts as not formatted."""
    if not any(v.name == FORMAT for v, _ in rubric.parts):
        return None
    return [s.metrics.get(FORMAT, 0.0) for s in scores]


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
    env: Any = None,
    context: int | None = None,
    agents: Any = None,
) -> dict[str, float]:
    """Metrics on ``rows`` (each with ``prompt_ids`` and what the rubric's verifiers need); ``env``: the run's
    environment config (None: one turn), ``context``: the model's context length (bounds an episode);
    ``agents``: the run's ``rlvr.agents.AgentRunner`` on ``engine`` (None: no agent), which then draws
    every episode."""
    from tqdm import tqdm

    from rlvr.scoring import Scorer, generate_and_score

    if not rows:
        raise ValueError("evaluate: no held-out rows")

    def draw(sampling: SamplingConfig):
        if agents is not None:
            return agents.generate_and_score(rows, sampling, scorer)
        return generate_and_score(engine, rows, sampling, scorer, env, context=context)

    scorer = Scorer(rubric, workers)
    bar = tqdm(total=len(rows) * (2 if k > 1 else 1), desc="eval", unit="prompt", disable=not progress,
               mininterval=1, leave=False)
    try:
        greedy, g_scores, _ = draw(SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed))
        bar.update(len(rows))
        first = [s[0] for s in g_scores]
        errors = sum(s.error is not None for s in first)
        metrics = {
            "pass@1": sum(bool(s.correct) for s in first) / len(rows),
            "response_len": sum(len(g.completions[0].token_ids) for g in greedy) / len(rows),
            "verifier_errors": float(errors),
            "verifier_error_rate": errors / len(rows),
            "num_prompts": float(len(rows)),
        }
        if env is not None and env.max_turns > 1:  # multi-turn: how the greedy episodes went
            episodes = [g.episodes[0] for g in greedy]
            metrics["turns"] = sum(t.turns for t in episodes) / len(rows)
            metrics["tool_calls"] = sum(t.info_count("tool_call") for t in episodes) / len(rows)
            metrics["tool_errors"] = sum(t.info_count("tool_error") for t in episodes) / len(rows)
            metrics["env_errors"] = float(sum(t.finish_reason == "env_error" for t in episodes))
        if agents is not None:  # how the greedy sessions went: failures by kind, model calls per session
            from rlvr.agents import agent_metrics

            metrics.update(agent_metrics(greedy))
            metrics["agent_failures"] = float(sum(t.finish_reason == "env_error" for g in greedy for t in g.episodes))
            metrics["turns"] = metrics.get("agent/calls_mean", 0.0)
        greedy_format = format_scores(rubric, first)
        if greedy_format is not None:
            metrics["format_rate"] = sum(greedy_format) / len(rows)
        for verifier, _ in rubric.parts:  # which verifiers judged this evaluation, and their mean reward
            metrics[f"reward/{verifier.name}"] = sum(s.metrics.get(verifier.name, 0.0) for s in first) / len(rows)
        if k > 1:
            sampled, s_scores, _ = draw(SamplingConfig(n=k, temperature=temperature, max_tokens=max_tokens,
                                                       seed=seed + 1))
            bar.update(len(rows))
            hits = [any(bool(s.correct) for s in group) for group in s_scores]
            flat = [s for group in s_scores for s in group]
            metrics[f"pass@{k}"] = sum(hits) / len(rows)
            metrics[f"sampled_acc@{k}"] = sum(bool(s.correct) for s in flat) / len(flat)
            # the strict R1 format of the T>0 samples: a base whose greedy answer is always well formed
            # can still sample malformed completions, and what SFT or RL does to that shows here
            sampled_format = format_scores(rubric, flat)
            if sampled_format is not None:
                metrics["sampled_format_rate"] = sum(sampled_format) / len(flat)
            metrics["sampled_error_rate"] = sum(s.error is not None for s in flat) / len(flat)
    finally:
        bar.close()
        scorer.close()
    return metrics


def eval_settings(cfg: Any) -> dict[str, Any]:
    """The evaluation arguments of a run's config (``eval.*``, its seed): the same in ``rlvr train``'s
    evaluations, ``rlvr eval`` and a recipe's report, so their numbers compare."""
    ev = cfg.eval
    return {"k": ev.k, "temperature": ev.temperature, "max_tokens": ev.max_tokens, "seed": cfg.train.seed + 7}


def evaluate_model(cfg: Any, model_dir: str | None = None, progress: bool = False,
                   verbose: bool = False) -> dict[str, float]:
    """Held-out metrics of the model ``model_dir`` (default ``cfg.model``) on ``cfg``'s task and rubric, on a
    fresh engine of ``cfg.engine`` (what ``rlvr eval`` and a recipe's report run); through ``cfg.agent``'s
    agent when the config has one."""
    from transformers import AutoTokenizer

    from rlvr.components import build_engine, build_rubric, load_rows
    from rlvr.config import ConfigError
    from rlvr.models import context_length, resolve_model

    if cfg.eval.num_prompts == 0:
        raise ConfigError("eval.num_prompts=0 turns evaluation off: there is nothing to evaluate on")
    model_dir = resolve_model(cfg.model if model_dir is None else model_dir)
    rubric = build_rubric(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = load_rows(cfg, tokenizer, rubric, model_dir, verbose=verbose).test
    engine = build_engine(cfg, model_dir)
    agents = None
    try:
        context = context_length(model_dir)
        if cfg.agent is not None:
            from rlvr.agents import AgentRunner

            # the server's own tokenizer: the HTTP side never shares the one the rows were rendered with
            agents = AgentRunner(cfg.agent, engine, AutoTokenizer.from_pretrained(model_dir), context,
                                 max(cfg.sampling.max_tokens, cfg.eval.max_tokens))
        return evaluate(engine, rows, rubric, workers=cfg.rewards.workers, progress=progress, env=cfg.env,
                        context=context, agents=agents, **eval_settings(cfg))
    finally:
        if agents is not None:
            agents.close()
        engine.close()

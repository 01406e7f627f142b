"""Running the user's agent once per sample of a draw, through the recording server.

``AgentRunner`` starts one ``rlvr.serve.Server`` per run (on 127.0.0.1, a free port, a random token),
in front of the run's rollout engine, and reuses it for every draw. For each row of a draw and each
of its ``sampling.n`` samples it opens a session (``<run>-<draw>-<row>-<sample>``) seeded from the
draw's seed for that row (``rlvr.envs.runner.turn_seed``: a deterministic agent samples the same
tokens in every run with the same seeds) and at the draw's ``sampling.temperature`` (what a call
that names no temperature is sampled at: an evaluation's greedy draw is greedy), and calls
``rollout(client, row)`` with an ``openai`` client whose base URL carries the session, at most
``agent.concurrency`` at a time. The server batches their model calls onto the engine.

A sample fails, and is kept out of its group's baseline and the loss (outcome ``infra_error``,
through an ``env_error`` episode: the agent is this sample's environment), when its agent raises
(``agent_raised``), runs past ``agent.timeout_s`` (``agent_timeout``; its session is closed, so
its later calls are refused), returns something that is not a reward, None or a dict of
'reward'/'completion' (``agent_bad_return``), or never calls the model (``agent_no_calls``). The
run goes on; ``agent/<failure>`` counts them per step (rlvr.agents.metrics).

A sample that did not fail trains on its session's exact sequences (rlvr.agents.sequences); its
completion, as the rubric and the logs see it, is its final model message (or the 'completion' the
agent returned), and its reward is the agent's or the rubric's score of that completion.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.agents.config import AgentConfig
from rlvr.agents.sequences import session_sequences
from rlvr.envs.runner import turn_seed
from rlvr.envs.trajectory import Budget, Trajectory
from rlvr.scoring import EpisodeGroup, Scorer, episode_completion
from rlvr.serve.clients import plain_http
from rollouts import Completion, SamplingConfig
from verifiers import Score

MODEL_NAME = "policy"  # what the agent passes as ``model=`` (also ``client.models.list()``)


def load_entry(entry: str) -> Callable[..., Any]:
    """The function ``entry`` names: 'path/to/file.py:name' (a file, loaded as a module of its own) or
    'package.module:name' (imported). An error names the entry and what is missing."""
    target, _, name = entry.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"agent.entry: no file {target!r} (from {entry!r})")
        mod_name = f"rlvr_agent_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"agent.entry: {target!r} has no function {name!r}")
    return fn


@dataclass
class SampleRun:
    """What one agent session gave: its return value or its failure, and its recorded calls."""

    value: Any = None
    failure: str | None = None  # one of rlvr.agents.metrics.FAILURES
    error: str = ""
    calls: list = field(default_factory=list)  # rlvr.serve.Call, in the order they finished


class AgentRunner:
    """The agent hook of one run: the server on ``engine`` and the agent's sessions (see the module doc).
    ``tokenizer``: the model's, a copy for the server's HTTP side; ``context``: the model's context length;
    ``max_tokens``: the most tokens one model call may sample."""

    def __init__(self, cfg: AgentConfig, engine: Any, tokenizer: Any, context: int | None, max_tokens: int):
        from rlvr.serve import Limits, Server

        self.cfg = cfg
        self.fn = load_entry(cfg.entry)
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.end_ids = frozenset(getattr(tokenizer, "all_special_ids", ()) or ())
        self.server = Server(engine, tokenizer, MODEL_NAME, limits=Limits(context=context, max_tokens=max_tokens),
                             max_batch=cfg.max_batch, window_s=cfg.window_s, http=cfg.http)
        self.run_id = secrets.token_hex(4)
        self.draws = 0

    # -- one draw -------------------------------------------------------------------------
    def generate_and_score(self, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig, scorer: Scorer,
                           version: int = 0) -> tuple[list[EpisodeGroup], list[list[Score]], dict[str, float]]:
        """Groups for ``rows``: ``sampling.n`` agent sessions each, scored; the same shape as
        rlvr.scoring.generate_and_score (``timings``: ``generate_s`` is the agents' time)."""
        import time

        draw, self.draws = self.draws, self.draws + 1
        seeds = sampling.prompt_seeds(len(rows))
        jobs = [(i, j, f"{self.run_id}-{draw}-{i}-{j}", None if seeds is None else turn_seed(seeds[i], j, 0))
                for i in range(len(rows)) for j in range(sampling.n)]
        t0 = time.perf_counter()
        runs = asyncio.run(self._run_all(rows, jobs, sampling.temperature))
        t1 = time.perf_counter()
        groups, scores = [], []
        for i, row in enumerate(rows):
            samples = [runs[(i, j)] for j in range(sampling.n)]
            group, values = self._group(row, samples, version)
            groups.append(group)
            scores.append(self._scores(scorer, group, row, values))
        t2 = time.perf_counter()
        return groups, scores, {"generate_s": t1 - t0, "score_s": t2 - t1, "score_wait_s": t2 - t1,
                                "score_hidden_s": 0.0}

    async def _run_all(self, rows: Sequence[Mapping[str, Any]], jobs: list,
                       temperature: float) -> dict[tuple[int, int], SampleRun]:
        limit = asyncio.Semaphore(self.cfg.concurrency)
        pool = None if self.is_async else ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="agent")

        async def one(i: int, j: int, session: str, seed: int | None) -> tuple[tuple[int, int], SampleRun]:
            async with limit:
                return (i, j), await self._session(dict(rows[i]), session, seed, temperature, pool)

        try:
            return dict(await asyncio.gather(*(one(*job) for job in jobs)))
        finally:
            if pool is not None:  # a sync agent past its deadline keeps its thread; it is not waited for
                pool.shutdown(wait=False, cancel_futures=True)

    async def _session(self, row: dict[str, Any], session: str, seed: int | None, temperature: float,
                       pool: ThreadPoolExecutor | None) -> SampleRun:
        import openai

        records, url, key = self.server.records, self.server.session_url(session), self.server.api_key
        records.open(session, seed, temperature)
        out = SampleRun()
        try:
            if self.is_async:
                client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=self.cfg.timeout_s,
                                            http_client=plain_http(self.cfg.timeout_s, asynchronous=True))
                try:
                    out.value = await asyncio.wait_for(self.fn(client, row), self.cfg.timeout_s)
                finally:
                    await client.close()
            else:
                loop = asyncio.get_running_loop()
                out.value = await asyncio.wait_for(loop.run_in_executor(pool, self._call_sync, url, key, row),
                                                   self.cfg.timeout_s)
        except TimeoutError:
            out.failure, out.error = "agent_timeout", f"the agent ran past agent.timeout_s={self.cfg.timeout_s}"
        except Exception as exc:  # noqa: BLE001 - the agent's own failure: this sample fails, the run goes on
            out.failure, out.error = "agent_raised", f"{type(exc).__name__}: {exc}"
        finally:
            records.close(session)
        out.calls = records.pop(session)
        if out.failure is None:
            problem = _return_problem(out.value)
            if problem:
                out.failure, out.error = "agent_bad_return", problem
            elif not out.calls:
                out.failure, out.error = "agent_no_calls", "the agent never called the model"
        return out

    def _call_sync(self, url: str, key: str, row: dict[str, Any]) -> Any:
        import openai

        with openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=self.cfg.timeout_s,
                           http_client=plain_http(self.cfg.timeout_s)) as client:
            return self.fn(client, row)

    # -- into episodes and scores -------------------------------------------------------------
    def _group(self, row: Mapping[str, Any], samples: list[SampleRun],
               version: int) -> tuple[EpisodeGroup, list[Any]]:
        prompt_ids = list(row.get("prompt_ids") or [])
        completions, episodes, sequences, values = [], [], [], []
        for s in samples:
            if s.failure is not None:
                traj = Trajectory(tuple(prompt_ids), Budget(), (), "env_error", f"{s.failure}: {s.error}")
                completions.append(Completion("", [], [], "env_error"))
                episodes.append(traj)
                sequences.append([traj])
                values.append(None)
                continue
            seqs = session_sequences(s.calls, version, self.end_ids)
            final = seqs[-1]
            comp = episode_completion(final)
            text = s.value.get("completion") if isinstance(s.value, dict) else None
            final_text = s.calls[-1].samples[0].text
            completions.append(Completion(final_text if text is None else text, comp.token_ids, comp.logprobs,
                                          comp.finish_reason))
            episodes.append(final)
            sequences.append(seqs)
            values.append(s.value.get("reward") if isinstance(s.value, dict) else s.value)
        group = EpisodeGroup(row.get("prompt_text", ""), prompt_ids, completions, episodes, sequences)
        return group, values

    @staticmethod
    def _scores(scorer: Scorer, group: EpisodeGroup, row: Mapping[str, Any], values: list[Any]) -> list[Score]:
        """The rubric's scores, with the agent's own reward where it returned one (and did not fail)."""
        needs_rubric = any(v is None and t.finish_reason != "env_error" for v, t in zip(values, group.episodes))
        rubric = scorer.submit(group, row).result() if needs_rubric else None
        out = []
        for k, (value, traj) in enumerate(zip(values, group.episodes)):
            if traj.finish_reason == "env_error":
                out.append(Score(0.0, None, {}, f"env_error: {traj.error}", outcome="infra_error"))
            elif value is None:
                out.append(rubric[k])  # type: ignore[index]
            else:
                out.append(Score(float(value), None, {"agent_reward": float(value)}))
        return out

    def close(self) -> None:
        self.server.close()


def _return_problem(value: Any) -> str:
    """Why ``value`` is not what an agent may return ('' when it is)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return ""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"reward", "completion"})
        if unknown:
            return f"the agent returned a dict with unknown keys {unknown} (allowed: 'reward', 'completion')"
        reward, completion = value.get("reward"), value.get("completion")
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            return f"the agent returned 'reward': {reward!r}, not a number"
        if completion is not None and not isinstance(completion, str):
            return f"the agent returned 'completion': {type(completion).__name__}, not a string"
        return ""
    return (f"the agent returned {type(value).__name__} {value!r:.80}; return a reward (a number), None (the rubric "
            "scores the final message) or a dict with 'reward' and/or 'completion'")

"""The ``openenv`` environment against a real OpenEnv server: tests/openenv_game.py, written with
openenv-core's server API (``create_app``), served by uvicorn on 127.0.0.1 (in a thread of this process,
or as ``env.app`` in a child process). Episodes run through ``generate_and_score`` (``run_episodes``, then
the rubric with the ``env_reward`` verifier) with a scripted engine, so
every action the model "sends" can be read exactly; the faults are real: a closed port, a server
answering HTTP 500, a game that raises on the server."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, closed_port_url, train_and_read
from pydantic import TypeAdapter, ValidationError

from rlvr.envs import EnvConfig, make_env
from rlvr.envs.openenv import OpenEnvError
from rlvr.scoring import Scorer, generate_and_score
from rollouts import Completion, Group, SamplingConfig
from verifiers import Rubric
from verifiers import get as get_verifier


def game():
    """tests/openenv_game.py, imported when a test first serves it: openenv-core's server imports gradio
    and fastmcp (seconds), which every other test collection should not pay."""
    import openenv_game

    return openenv_game


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]  # one id per character: observations' ids are checkable by eye


class CharTokenizer:  # what rlvr.scoring.encoder_of reads from an engine
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": encode(text)}


class ScriptedEngine:
    """Plays ``script[k]``, the turns of sample ``k`` in order: the first call samples turn 0 of each
    prompt's ``n`` episodes; a later call finds each prefix's episode by the longest turn it ends
    (whatever observation the environment appended after it) and answers that episode's next turn."""

    tokenizer = CharTokenizer()

    def __init__(self, script: list[list[str]]):
        self.script, self.calls = script, []
        self.ends: dict[tuple[int, ...], tuple[int, int]] = {}  # prefix through a turn -> (sample, turn)

    def generate(self, prompts, sampling, on_group=None):
        first = not self.calls
        self.calls.append(len(prompts))
        groups = []
        for i, p in enumerate(prompts):
            if first:
                picks = [(k, 0) for k in range(sampling.n)]
            else:
                k, t = self.ends[max((e for e in self.ends if tuple(p[: len(e)]) == e), key=len)]
                picks = [(k, t + 1)]
            comps = []
            for k, t in picks:
                text = self.script[k][t]
                self.ends[(*p, *encode(text))] = (k, t)
                comps.append(Completion(text, encode(text), [-1.0] * len(text), "stop"))
            groups.append(Group("", list(p), comps))
            if on_group is not None:
                on_group(i, groups[-1])
        return groups


def serve_in_thread(app):
    """``app`` served by uvicorn on a thread, on 127.0.0.1; (url, server) once it has started."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


@pytest.fixture(scope="module")
def game_url():
    url, server, thread = serve_in_thread(game().app)
    yield url
    server.should_exit = True
    thread.join(10)


def config(**fields):
    defaults = {"kind": "openenv", "action": "json", "reset_fields": ["secret"], "observation_field": "message",
                "max_turns": 4, "retry_backoff_s": 0.0, "timeout_s": 10.0}
    return TypeAdapter(EnvConfig).validate_python({**defaults, **fields})


ROW = {"prompt_ids": [1, 2, 3], "prompt_text": "Guess.", "secret": 5}
RUBRIC = Rubric([(get_verifier("env_reward"), 1.0)])


def draw(engine, cfg, rows=(ROW,), n=2):
    scorer = Scorer(RUBRIC, workers=1)
    try:
        groups, scores, _ = generate_and_score(engine, list(rows), SamplingConfig(n=n, max_tokens=32, seed=3), scorer,
                                               cfg)
    finally:
        scorer.close()
    return groups, scores


def test_episodes_play_the_served_game_and_score_its_reward(game_url):
    engine = ScriptedEngine([['{"guess": 3}', '{"guess": 9}', '{"guess": 5}'], ['{"guess": 5}']])
    (group,), (scores,) = draw(engine, config(url=game_url, reset_template=" {observation}"))
    a, b = group.episodes
    reset = " Guess a number from 1 to 16."
    assert list(a.prompt_ids) == [1, 2, 3, *encode(reset)]  # the row's prompt, then the reset observation
    assert (a.turns, b.turns) == (3, 1) and a.finish_reason == b.finish_reason == "stop"
    assert a.text() == '{"guess": 3}\nhigher\n{"guess": 9}\nlower\n{"guess": 5}'
    assert [i["reward"] for i in a.infos] == [0.0, 0.0, 1.0] and a.env_reward() == b.env_reward() == 1.0
    assert [s.reward for s in scores] == [1.0, 1.0] and all(s.correct and s.trainable for s in scores)
    assert engine.calls == [1, 1, 1]  # turn 0 of the row's two samples, then the episode still running


def test_an_episode_the_game_never_rewards_scores_zero_as_the_policys_doing(game_url):
    engine = ScriptedEngine([['{"guess": 1}', '{"guess": 2}'], ['{"guess": 16}', '{"guess": 15}']])
    (group,), (scores,) = draw(engine, config(url=game_url, max_turns=2))
    assert [t.finish_reason for t in group.episodes] == ["max_turns", "max_turns"]
    assert [s.reward for s in scores] == [0.0, 0.0] and all(s.outcome == "wrong" for s in scores)


def test_a_malformed_or_rejected_action_is_an_error_observation_and_the_episode_goes_on(game_url):
    turns = ["guess five", "[5]", '{"guess": "five"}', '{"guess": 5, "speed": 1}', '{"guess": 5}']
    engine = ScriptedEngine([turns])
    (group,), (scores,) = draw(engine, config(url=game_url, max_turns=5), n=1)
    (t,) = group.episodes
    observations = [s.text for s in t.segments[1::2]]
    assert "not valid JSON" in observations[0] and "must be a JSON object, got list" in observations[1]
    assert "invalid action: guess: Input should be a valid integer" in observations[2]  # the server's schema
    assert "speed" in observations[3]  # OpenEnv actions forbid unknown fields
    assert [i["status"] for i in t.infos] == ["malformed", "malformed", "rejected", "rejected", "ok"]
    assert t.info_count("tool_error") == 4 and t.finish_reason == "stop" and scores[0].reward == 1.0


def test_a_text_action_fills_the_action_field(game_url):
    env = make_env(config(url=game_url, action="text", action_field="guess"), encode)
    env.reset(ROW)
    obs, done, info = env.step(encode(" 4 "), " 4 ")  # the server's Action model parses "4" as its int field
    assert (obs.text, done, info["reward"]) == ("\nhigher\n", False, 0.0)
    assert env.step(encode("5"), "5")[1:] == (True, {"reward": 1.0, "tool_error": 0, "status": "ok"})
    env.close()


def test_a_server_that_is_down_is_a_start_up_error_naming_the_url():
    url = closed_port_url().removesuffix("/v1")
    with pytest.raises(OpenEnvError, match=f"OpenEnv server at {url} is not reachable"):
        make_env(config(url=url), encode)


class Failing:
    """An HTTP server on 127.0.0.1 that answers 500: to everything, or (``health_ok``) to all but
    GET /health, so the WebSocket handshake of every session is refused. Counts the handshakes."""

    def __init__(self, health_ok: bool):
        owner = self
        self.handshakes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # what a WebSocket client reads a refused handshake in

            def log_message(self, *args):
                pass

            def do_GET(self):
                ok = health_ok and self.path == "/health"
                if self.path == "/ws":
                    owner.handshakes += 1
                body = json.dumps({"status": "healthy"} if ok else {"detail": "Internal Server Error"}).encode()
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # prompt shutdown()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_server_answering_500_at_start_up_is_an_error_naming_the_url_and_status():
    server = Failing(health_ok=False)
    try:
        with pytest.raises(OpenEnvError, match=f"{server.url} answered HTTP 500"):
            make_env(config(url=server.url), encode)
    finally:
        server.close()


def test_sessions_refused_with_500_fail_their_episodes_after_the_retry_budget():
    server = Failing(health_ok=True)
    try:
        engine = ScriptedEngine([['{"guess": 5}'], ['{"guess": 5}']])
        (group,), (scores,) = draw(engine, config(url=server.url, retries=2))
    finally:
        server.close()
    assert server.handshakes == 2 * 3  # each episode's reset: one try and two retries
    for t, s in zip(group.episodes, scores):
        assert t.finish_reason == "env_error" and t.turns == 0
        assert f"OpenEnv server at {server.url}: reset failed after 3 attempt(s): HTTP 500" in t.error
        assert s.outcome == "infra_error" and not s.trainable  # kept out of the baseline, never a 0


def test_a_game_that_raises_on_the_server_fails_its_episode_and_spares_the_group(game_url):
    engine = ScriptedEngine([['{"guess": 3}', '{"guess": 13}'], ['{"guess": 5}']])
    (group,), (scores,) = draw(engine, config(url=game_url, retries=1))
    broken, fine = group.episodes
    assert broken.finish_reason == "env_error" and broken.turns == 2
    assert "step failed after 2 attempt(s)" in broken.error and "unlucky guess: the game crashed" in broken.error
    assert scores[0].outcome == "infra_error" and not scores[0].trainable
    assert fine.finish_reason == "stop" and scores[1].reward == 1.0


def test_a_transient_failure_is_retried_on_a_session_replayed_to_where_the_episode_was(game_url):
    game().FLAKY["armed"] = True  # the next guess of 11 raises once
    engine = ScriptedEngine([['{"guess": 3}', '{"guess": 11}', '{"guess": 5}']])
    (group,), (scores,) = draw(engine, config(url=game_url, retries=1), n=1)
    (t,) = group.episodes
    assert not game().FLAKY["armed"] and t.finish_reason == "stop"
    assert t.text() == '{"guess": 3}\nhigher\n{"guess": 11}\nlower\n{"guess": 5}' and scores[0].reward == 1.0


def test_config_is_checked():
    with pytest.raises(ValidationError, match="exactly one of env.url"):
        config()
    with pytest.raises(ValidationError, match="exactly one of env.url"):
        config(url="http://x", app="m:app")
    with pytest.raises(ValidationError, match="package.module:attribute"):
        config(app="openenv_game")
    with pytest.raises(ValidationError, match="observation_template"):
        config(url="http://x", observation_template="no slot")


def test_a_row_without_the_reset_fields_is_a_data_error_naming_them(game_url):
    from rlvr.errors import DataError

    env = make_env(config(url=game_url, reset_fields=["secret", "level"]), encode)
    with pytest.raises(DataError, match=r"no \['level'\].*row keys"):
        env.reset(ROW)


SERVE_AND_DIE = """
import os, sys
sys.path.insert(0, {tests!r})
from rlvr.envs.openenv import server_url, _STARTED
from pydantic import TypeAdapter
from rlvr.envs import EnvConfig
cfg = TypeAdapter(EnvConfig).validate_python({{"kind": "openenv", "app": "openenv_game:app"}})
url = server_url(cfg)
assert server_url(cfg) == url  # once per process
print(url, _STARTED["openenv_game:app"].proc.pid, flush=True)
os.kill(os.getpid(), 9)  # no atexit: the server must notice its parent is gone
"""


@pytest.mark.e2e  # starts the server in a child process
def test_an_app_started_from_its_module_path_starts_once_per_process_and_dies_with_it():
    out = subprocess.run([sys.executable, "-c", SERVE_AND_DIE.format(tests=str(ROOT / "tests"))], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == -signal.SIGKILL, out.stderr
    url, pid = out.stdout.split()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail(f"the server {pid} outlived its parent")


@pytest.mark.e2e  # starts the server in a child process
def test_an_app_started_here_plays_episodes_and_stops_on_close():
    from rlvr.envs import openenv as module

    cfg = config(app="openenv_game:app")
    engine = ScriptedEngine([['{"guess": 8}', '{"guess": 5}']])
    try:
        (group,), (scores,) = draw(engine, cfg, n=1)
        assert group.episodes[0].text() == '{"guess": 8}\nlower\n{"guess": 5}' and scores[0].reward == 1.0
        server = module._STARTED["openenv_game:app"]
        assert make_env(cfg, encode).url == server.url  # one server for every environment of the process
    finally:
        server = module._STARTED.pop("openenv_game:app")
        server.close()
    assert server.proc.poll() is not None


def test_the_env_reward_verifier_reads_the_episodes_return_and_says_when_there_is_none():
    verifier = get_verifier("env_reward")
    assert verifier.score("", {"env_reward": 0.5}).correct and verifier.score("", {"env_reward": 0.5}).reward == 0.5
    assert verifier.score("", {"env_reward": None}).outcome == "wrong"  # the environment never rewarded it
    for bad, why in (({}, "no 'env_reward' in the row"), ({"env_reward": float("nan")}, "not a finite number")):
        score = verifier.score("", bad)
        assert score.outcome == "verifier_error" and why in score.error


def test_the_samples_of_a_row_must_start_from_the_same_observation():
    from rlvr.envs import Observation
    from rlvr.envs.runner import first_observation

    class Starts:
        def __init__(self, ids):
            self.ids = ids

        def reset(self, row):
            if self.ids is None:
                raise OpenEnvError("OpenEnv server at http://x: reset failed")
            return Observation(self.ids)

    errors = [None, None, None]
    assert first_observation("openenv", 0, ROW, [Starts(None), Starts([4]), Starts([4])], errors) == [4]
    assert errors[0] == "reset: OpenEnvError: OpenEnv server at http://x: reset failed" and errors[1:] == [None, None]
    with pytest.raises(ValueError, match="row 0 start from different first observations"):
        first_observation("openenv", 0, ROW, [Starts([4]), Starts([5])], [None, None])


def test_two_rl_steps_of_the_micro_base_against_the_served_game(micro_model, tiny_cfg, tmp_path, game_url):
    """A run end to end: the micro base's turns go to the served game as its ``guess`` field, the game's
    reward is the run's (``env_reward``), and two RL steps train on those episodes with the parity gate."""

    cfg = tiny_cfg("task.kind=guess_number", "env.kind=openenv", f"env.url={game_url}", "env.reset_fields=[secret]",
                   "env.action_field=guess", "env.observation_field=message", "env.max_turns=3",
                   "rewards=[{verifier: env_reward}]", "engine.kind=static", "train.prompts_per_step=2",
                   model=micro_model, run_dir=tmp_path / "run", **{"train.steps": 2})
    steps, evals = train_and_read(cfg)
    for r in steps:
        assert r["env_errors"] == 0.0 and 1.0 <= r["turns_mean"] <= 3.0 and r["logp_diff_max"] < 1e-3
        assert "reward/env_reward" in r
    assert any(r["turns_mean"] > 1.0 for r in steps)  # the game answered and the base played on

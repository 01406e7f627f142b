"""``openenv``: any OpenEnv environment (openenv-core 0.3.0's server), reached at a URL or started here.

An OpenEnv environment is a FastAPI app (``openenv.core.env_server.create_app(Env, Action, Observation)``)
whose episodes are *sessions on its WebSocket* ``/ws``: one connection per episode, messages
``{"type": "reset", "data": {...}}`` and ``{"type": "step", "data": <action fields>}``, each answered by
``{"type": "observation", "data": {"observation": {...}, "reward": r, "done": d}}`` or
``{"type": "error", "data": {"message", "code"}}``. (Its HTTP ``/reset`` and ``/step`` build a fresh
environment per request in 0.3.0, so they cannot hold a multi-turn episode; ``/health`` is used to see
that a server is up.) This client speaks that protocol with ``websockets`` and needs no openenv-core;
the environment's own process needs it.

* **Where the server is.** ``url``: a running server (every rollout process connects to it). ``app``:
  ``package.module:app``, started once per process (a Ray rollout worker starts its own) on 127.0.0.1 on a
  free port, in a child process that exits with this one; the server must allow as many concurrent
  sessions as episodes run at once (``max_concurrent_envs`` >= rows per draw x ``sampling.n``).
* **What the model sees.** ``reset`` sends the row's ``reset_fields`` (e.g. a ``seed``) and shows the
  row's prompt, followed by the reset observation through ``reset_template`` when one is set. Each later
  observation is its ``observation_field`` (or the whole observation as JSON) through
  ``observation_template``.
* **How a turn becomes an action.** ``action: text``: the turn's text (stripped) goes into
  ``action_field``. ``action: json``: the turn's text must be a JSON object, which is the action. Either
  way ``action_defaults`` fills fields the turn leaves out. A turn that is not a JSON object, or an action
  the server rejects (``VALIDATION_ERROR``), is answered with ``error_template`` and counted as a tool
  error (``info["tool_error"]``); the episode goes on: the policy sees what it did.
* **Rewards.** The reward of each step is kept as ``info["reward"]``; ``rlvr.scoring`` gives their sum to
  the ``env_reward`` verifier, so ``rewards: [{verifier: env_reward}]`` trains on the environment's own
  reward (add other verifiers by weight to mix it with the rubric's).
* **Faults.** A connection that fails, a handshake refused (HTTP 500), an answer not back within
  ``timeout_s``, or the environment raising on the server (``EXECUTION_ERROR``) is retried ``retries``
  times: a new session is opened and the episode's actions so far are replayed before the failed one
  is sent again (a replay that answers differently fails the episode: the environment is not
  deterministic). After the budget the step raises, naming the URL and the failure, and the episode
  ends ``env_error`` (scored ``infra_error``, kept out of its group's baseline, never a 0). A server that
  is down or unhealthy when the first environment is built is a start-up error naming the URL.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from rlvr.envs.base import Encode, EnvBase, Observation, prompt_observation, register_env
from rlvr.errors import DataError


class OpenEnvError(RuntimeError):
    """An OpenEnv server that cannot be reached or failed; the message names its URL."""


class OpenEnvConfig(EnvBase):
    """An OpenEnv environment served over HTTP/WebSocket: at ``url``, or started from ``app``."""

    kind: Literal["openenv"] = "openenv"
    max_turns: int = Field(8, ge=1, description="Most model turns (actions) in one episode.")
    url: str | None = Field(None, description="Base URL of a running OpenEnv server (http://host:port); its "
                            "WebSocket is <url>/ws. Exactly one of url and app.")
    app: str | None = Field(None, description="'package.module:attribute' of an OpenEnv app to serve on "
                            "127.0.0.1 (a free port), once per process, stopped when the process ends.")
    reset_fields: list[str] = Field(default_factory=list, description="Row keys sent as reset arguments (e.g. "
                                    "['seed']); every sample of a row must start in the same state.")
    reset_template: str | None = Field(None, description="How the reset observation is shown after the row's "
                                       "prompt ({observation}); None: the row's prompt alone.")
    action: Literal["text", "json"] = Field("text", description="text: the turn's text goes into action_field; "
                                            "json: the turn's text is the action, a JSON object.")
    action_field: str = Field("message", description="The action field the turn's text fills (action: text).")
    action_defaults: dict[str, Any] = Field(default_factory=dict, description="Action fields added when the turn "
                                            "does not give them.")
    observation_field: str | None = Field(None, description="The observation field shown to the model; None: "
                                          "the whole observation as JSON.")
    observation_template: str = Field("\n{observation}\n", description="How an observation is shown; "
                                      "{observation} is its text.")
    error_template: str = Field("\nerror: {error}\n", description="The observation answering a malformed or "
                                "rejected action; {error} says what was wrong.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a model turn besides EOS (e.g. "
                            "the closing tag of an action).")
    timeout_s: float = Field(30.0, gt=0, description="Seconds to connect, and to wait for each answer.")
    retries: int = Field(2, ge=0, le=10, description="How many more times a failed reset or step is tried, each on "
                         "a new session with the episode replayed, before the episode fails (env_error).")
    retry_backoff_s: float = Field(0.5, ge=0, description="Seconds before the first retry, doubling after each.")
    startup_timeout_s: float = Field(60.0, gt=0, description="Seconds an app started here has to answer /health.")

    @model_validator(mode="after")
    def _check(self) -> OpenEnvConfig:
        if (self.url is None) == (self.app is None):
            raise ValueError("env: give exactly one of env.url (a running OpenEnv server) and env.app "
                             "('package.module:attribute' to serve here)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"env.url must start with http:// or https://, got {self.url!r}")
        if self.app is not None and ":" not in self.app:
            raise ValueError(f"env.app must be 'package.module:attribute', got {self.app!r}")
        for name in ("observation_template", "reset_template"):
            template = getattr(self, name)
            if template is not None and "{observation}" not in template:
                raise ValueError(f"env.{name} must contain '{{observation}}'")
        if "{error}" not in self.error_template:
            raise ValueError("env.error_template must contain '{error}'")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.stop)


# -- the server: reached, or started once per process --------------------------------------------------

_LOCK = threading.Lock()
_CHECKED: set[str] = set()  # URLs whose /health answered in this process
_STARTED: dict[str, LocalServer] = {}  # app path -> its server in this process


def health(url: str, timeout_s: float) -> None:
    """Raise ``OpenEnvError`` naming ``url`` unless its ``/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        raise OpenEnvError(f"OpenEnv server at {url} is not reachable: {exc}") from exc
    if status != 200:
        raise OpenEnvError(f"OpenEnv server at {url} answered HTTP {status} to GET /health")


def serve_app(app_path: str, fd: int, parent: int) -> None:
    """The child process of ``LocalServer``: serve ``app_path`` with uvicorn on the listening socket ``fd``;
    exit when the parent ``parent`` is gone (even after a kill -9, which runs no atexit)."""
    import importlib

    import uvicorn

    module, _, attr = app_path.partition(":")
    app = getattr(importlib.import_module(module), attr)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    sock = socket.socket(fileno=fd)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


class LocalServer:
    """``app_path`` served by uvicorn in a child process on 127.0.0.1; ``url`` once it answers /health.

    The port is bound here and the listening socket handed to the child, so no other process can take it
    between choosing and binding. The child inherits this process's ``sys.path`` (an app importable here
    is importable there) and is stopped by ``close`` (registered with atexit)."""

    def __init__(self, app_path: str, startup_timeout_s: float):
        self.app_path = app_path
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._log = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        code = f"from rlvr.envs.openenv import serve_app; serve_app({app_path!r}, {sock.fileno()}, {os.getpid()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[sock.fileno()], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        sock.close()  # the child holds it now
        atexit.register(self.close)
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise OpenEnvError(f"OpenEnv app {app_path!r} exited with code {self.proc.returncode} before "
                                   f"serving at {self.url}:\n{self.output()}")
            try:
                health(self.url, 2.0)
                return
            except OpenEnvError as exc:
                if time.monotonic() > deadline:
                    self.close()
                    raise OpenEnvError(f"OpenEnv app {app_path!r} did not answer /health at {self.url} within "
                                       f"{startup_timeout_s:g} s ({exc}):\n{self.output()}") from None
                time.sleep(0.1)

    def output(self, tail: int = 4000) -> str:
        """The last ``tail`` characters the child printed."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-tail:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_url(cfg: OpenEnvConfig) -> str:
    """The base URL of ``cfg``'s server, started (``app``) or health-checked (``url``) on first use in this
    process: environments are built per episode, the server is not."""
    with _LOCK:
        if cfg.app is not None:
            if cfg.app not in _STARTED:
                _STARTED[cfg.app] = LocalServer(cfg.app, cfg.startup_timeout_s)
            return _STARTED[cfg.app].url
        url = cfg.url.rstrip("/")  # type: ignore[union-attr]
        if url not in _CHECKED:
            health(url, cfg.timeout_s)
            _CHECKED.add(url)
        return url


# -- one episode: a session on the server's WebSocket ----------------------------------------------------


class Rejected(Exception):
    """The server refused an action as invalid (the policy's doing: shown to the model, not retried)."""


class Session:
    """One WebSocket session (one environment instance on the server): ``call(type, data) -> data``."""

    def __init__(self, url: str, timeout_s: float):
        from websockets.sync.client import connect

        self.url, self.timeout_s = url, timeout_s
        ws_url = "ws" + url[len("http"):] + "/ws"
        self.ws = connect(ws_url, open_timeout=timeout_s, close_timeout=1, max_size=None, proxy=None, legacy=True)

    def call(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        self.ws.send(json.dumps({"type": kind, "data": data}))
        reply = json.loads(self.ws.recv(timeout=self.timeout_s))
        if reply.get("type") == "error":
            info = reply.get("data") or {}
            if info.get("code") == "VALIDATION_ERROR" and kind == "step":
                raise Rejected(_validation_message(info))
            raise OpenEnvError(f"{info.get('code', 'error')}: {info.get('message', reply)}")
        if reply.get("type") != "observation":
            raise OpenEnvError(f"unexpected answer to {kind!r}: {str(reply)[:200]}")
        return reply["data"]

    def close(self) -> None:
        try:
            self.ws.send(json.dumps({"type": "close"}))
        except Exception:  # a session that already broke has nothing to close
            pass
        self.ws.close()


def _validation_message(info: Mapping[str, Any]) -> str:
    errors = info.get("errors") or []
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}".strip(": ") for e in errors]
    return "; ".join(parts) or str(info.get("message", "invalid action"))


def _failure(exc: BaseException) -> str:
    """What went wrong with a session, in words: the HTTP status of a refused handshake, else the error."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status} on the WebSocket handshake"
    return f"{type(exc).__name__}: {exc}"


class OpenEnv:
    """One episode of an OpenEnv environment: a session opened by ``reset``, closed by ``close``."""

    def __init__(self, cfg: OpenEnvConfig, encode: Encode):
        self.cfg, self.encode = cfg, encode
        self.url = server_url(cfg)
        self.session: Session | None = None
        self.reset_data: dict[str, Any] = {}
        self.history: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (action, answer) of each step sent
        self.started = False

    # -- the session, with retries -------------------------------------------------------------------
    def _replayed(self) -> Session:
        """A new session brought to where this episode is: reset, then every action taken so far."""
        session = Session(self.url, self.cfg.timeout_s)
        try:
            session.call("reset", self.reset_data)
            for k, (action, answer) in enumerate(self.history):
                again = session.call("step", action)
                if again != answer:
                    raise OpenEnvError(f"replaying step {k + 1} answered differently (the environment is not "
                                       f"deterministic, so a failed session cannot be restored)")
        except BaseException:
            session.close()
            raise
        return session

    def _send(self, what: str, action: dict[str, Any] | None) -> dict[str, Any]:
        """``reset`` (action None) or ``step`` on this episode's session, retried on a new, replayed session."""
        failure = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.retry_backoff_s * 2 ** (attempt - 1))
            try:
                if self.session is None:
                    self.session = Session(self.url, self.cfg.timeout_s) if action is None else self._replayed()
                return self.session.call(what, self.reset_data if action is None else action)
            except Rejected:
                raise
            except Exception as exc:  # the server's or the network's doing: a new session, then try again
                failure = _failure(exc)
                self._drop_session()
        raise OpenEnvError(f"OpenEnv server at {self.url}: {what} failed after {self.cfg.retries + 1} "
                           f"attempt(s): {failure}")

    def _drop_session(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:  # it is being dropped because it broke
                pass
            self.session = None

    def close(self) -> None:
        """End the episode's session on the server (the runner calls it when the draw is over)."""
        self._drop_session()

    # -- Env -----------------------------------------------------------------------------------------
    def reset(self, row: Mapping[str, Any]) -> Observation:
        missing = [k for k in self.cfg.reset_fields if k not in row]
        if missing:
            raise DataError(f"environment 'openenv': the row has no {missing} (env.reset_fields); row keys: "
                            f"{sorted(row)}")
        self._drop_session()
        self.reset_data, self.history = {k: row[k] for k in self.cfg.reset_fields}, []
        answer = self._send("reset", None)
        self.started = True
        prompt = prompt_observation(row, "openenv")
        if self.cfg.reset_template is None:
            return prompt
        text = self.cfg.reset_template.format(observation=self._observation_text(answer))
        return Observation(list(prompt.ids) + self.encode(text), prompt.text + text)

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        if not self.started:
            raise RuntimeError("openenv: step before reset")
        action, problem = self._action_of(model_turn_text)
        if action is None:
            return self._error(problem), False, {"reward": None, "tool_error": 1, "status": "malformed"}
        try:
            answer = self._send("step", action)
        except Rejected as exc:
            return self._error(f"invalid action: {exc}"), False, {"reward": None, "tool_error": 1,
                                                                   "status": "rejected"}
        self.history.append((action, answer))
        reward = answer.get("reward")
        info = {"reward": None if reward is None else float(reward), "tool_error": 0, "status": "ok"}
        if answer.get("done"):
            self.close()
            return None, True, info
        text = self.cfg.observation_template.format(observation=self._observation_text(answer))
        return Observation(self.encode(text), text), False, info

    # -- text <-> protocol ----------------------------------------------------------------------------
    def _action_of(self, text: str) -> tuple[dict[str, Any] | None, str]:
        """The action of a model turn, or None and what is wrong with the turn."""
        if self.cfg.action == "text":
            return {**self.cfg.action_defaults, self.cfg.action_field: text.strip()}, ""
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            return None, f"the action is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        if not isinstance(value, dict):
            return None, f"the action must be a JSON object, got {type(value).__name__}"
        return {**self.cfg.action_defaults, **value}, ""

    def _observation_text(self, answer: Mapping[str, Any]) -> str:
        obs = answer.get("observation") or {}
        field = self.cfg.observation_field
        if field is None:
            return json.dumps(obs, ensure_ascii=False, sort_keys=True)
        if field not in obs:
            raise OpenEnvError(f"OpenEnv server at {self.url}: the observation has no field {field!r} "
                               f"(env.observation_field); its fields: {sorted(obs)}")
        value = obs[field]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def _error(self, problem: str) -> Observation:
        text = self.cfg.error_template.format(error=problem)
        return Observation(self.encode(text), text)


@register_env("openenv", OpenEnvConfig)
def build(cfg: OpenEnvConfig, encode: Encode) -> OpenEnv:
    return OpenEnv(cfg, encode)

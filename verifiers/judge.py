"""The ``judge`` verifier: an LLM judge behind an OpenAI-compatible endpoint.

Each completion is put into a rubric prompt (a template file with ``{question}``, ``{answer}`` (or
``{reference}``) and ``{completion}`` slots), sent to ``/v1/chat/completions`` (or ``/v1/completions``),
and the judge's score is read from its reply with a regular expression and divided by ``max_score``.

What a judge can do wrong is never the policy's doing: a request that times out, an HTTP error, a
server that is down, a reply without a readable score (or one outside ``[min_score, max_score]``) is
``infra_error``. The request is retried ``retries`` times here (with backoff); a row still failing is
then retried by the trainer (``rewards.retries``) and finally kept out of training, never scored 0.

Replies are cached by the hash of everything sent (endpoint, model, system prompt and the rendered
prompt, which holds the question, the reference and the completion), so the same (prompt, completion)
is sent once; concurrent requests for the same key wait for the first instead of sending their own.
Only successful scores are cached. Calls run on a pool of ``concurrency`` threads shared by every
caller of this verifier, which bounds the requests in flight to the endpoint.

HTTP is stdlib ``urllib`` on purpose: the verifiers package installs without extra dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from http.client import HTTPException
from pathlib import Path
from typing import Any

from verifiers.base import InfraError, Requirement, Score, missing_from
from verifiers.batch import crash_score

DEFAULT_TEMPLATE = """You are grading a student's answer to a question.

Question:
{question}

Reference answer:
{answer}

Student's answer:
{completion}

Compare the student's final answer with the reference. Reply with one line of reasoning, then a line
"Score: N" where N is an integer from 0 (wrong) to 10 (right and clearly explained)."""
DEFAULT_SCORE_REGEX = r"(?i)score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)"
ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions"}
# template slot -> the task keys that fill it (the first present one)
SLOTS: dict[str, tuple[str, ...]] = {"question": ("question", "prompt"), "answer": ("answer", "reference"),
                                     "reference": ("answer", "reference"), "completion": ()}
_SLOT = re.compile(r"\{(" + "|".join(SLOTS) + r")\}")
_NO_RETRY = frozenset({400, 401, 403, 404, 405, 413, 422})  # the request is wrong: sending it again will not help


class JudgeError(InfraError):
    """The judge did not give a usable score (timeout, HTTP error, no server, unparsable reply).
    ``retryable``: whether sending the same request again may help (not for a 400 or a 401)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class JudgeVerifier:
    """``verifiers.get("judge", base_url="http://127.0.0.1:8000/v1", model="m", template="rubric.txt")``.

    base_url:    the OpenAI-compatible API root, as the OpenAI client takes it (``.../v1``).
    model:       the model name sent in each request.
    api_key:     sent as ``Authorization: Bearer``; prefer ``api_key_env``, the name of an environment
                 variable holding it (a config file keeps no secret). Neither: no header (local servers).
    template:    a template file; ``{question}``, ``{answer}`` / ``{reference}`` and ``{completion}`` are
                 replaced (other braces are left alone). None: `DEFAULT_TEMPLATE`.
    endpoint:    ``chat`` (``/chat/completions``, the prompt as one user message after ``system`` if given)
                 or ``completions`` (``/completions``, the prompt as is).
    score_regex: the judge's score is group 1 of its last match in the reply.
    max_score:   reward = score / max_score; a score outside ``[min_score, max_score]`` is unparsable.
    timeout_s:   socket timeout of each request (connecting, and each read).
    retries:     more attempts per request after a failure (backoff ``backoff_s`` doubling), besides the
                 trainer's own ``rewards.retries`` of a failed row. 4xx answers but 408 and 429 are not retried.
    concurrency: requests in flight at once (one thread pool per verifier, shared by its callers).
    cache:       remember each successful score by the hash of the request (``cache_size`` entries).
    name:        the name in a rubric (two judges in one rubric need two names).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, api_key_env: str | None = None,
                 template: str | None = None, endpoint: str = "chat", system: str | None = None,
                 score_regex: str = DEFAULT_SCORE_REGEX, max_score: float = 10.0, min_score: float = 0.0,
                 timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.5, concurrency: int = 8,
                 cache: bool = True, cache_size: int = 100_000, max_tokens: int = 256, temperature: float = 0.0,
                 name: str = "judge"):
        if endpoint not in ENDPOINTS:
            raise ValueError(f"judge endpoint must be one of {sorted(ENDPOINTS)}, got {endpoint!r}")
        if not max_score > min_score:
            raise ValueError(f"judge max_score ({max_score}) must be above min_score ({min_score})")
        if timeout_s <= 0 or retries < 0 or concurrency < 1 or backoff_s < 0:
            raise ValueError("judge needs timeout_s > 0, retries >= 0, backoff_s >= 0 and concurrency >= 1")
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(f"judge api_key_env={api_key_env!r}: that environment variable is not set")
        self.template = DEFAULT_TEMPLATE if template is None else Path(template).read_text()
        if "{completion}" not in self.template:
            raise ValueError(f"judge template {template!r} has no {{completion}} slot")
        self.score_re = re.compile(score_regex)
        if self.score_re.groups < 1:
            raise ValueError(f"judge score_regex {score_regex!r} needs a group holding the score")
        self.name, self.model, self.endpoint, self.system = name, model, endpoint, system
        self.url = base_url.rstrip("/") + ENDPOINTS[endpoint]
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.max_score, self.min_score = float(max_score), float(min_score)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), float(backoff_s)
        self.concurrency, self.cache, self.cache_size = int(concurrency), bool(cache), int(cache_size)
        self.max_tokens, self.temperature = int(max_tokens), float(temperature)
        self._lock = threading.Lock()
        self._done: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    # --- what the template needs ---------------------------------------------------------------

    @property
    def requires(self) -> tuple[Requirement, ...]:
        keys = [SLOTS[s] for s in dict.fromkeys(_SLOT.findall(self.template)) if SLOTS[s]]
        return tuple(dict.fromkeys(keys))

    def missing_keys(self, task: Mapping[str, Any]) -> list[str]:
        return missing_from(self.requires, task)

    def render(self, completion: str, task: Mapping[str, Any]) -> str:
        """The prompt sent for ``completion``: the template with its slots filled from ``task``."""
        def fill(m: re.Match) -> str:
            slot = m.group(1)
            if slot == "completion":
                return completion
            value = next((task[k] for k in SLOTS[slot] if task.get(k) not in (None, "")), "")
            return value if isinstance(value, str) else json.dumps(value, default=str)

        return _SLOT.sub(fill, self.template)

    # --- scoring -------------------------------------------------------------------------------

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        try:
            raw, cached = self._judge(self.render(completion, task))
        except JudgeError as exc:
            return Score(0.0, None, {}, f"judge: {exc}", "infra_error")
        reward = (raw - self.min_score) / (self.max_score - self.min_score)
        return Score(reward, None, {"raw_score": raw, "cached": float(cached)})

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        """Every row on the verifier's own pool of ``concurrency`` threads (``workers`` is not used: the
        endpoint's capacity, not the caller's, bounds the requests in flight)."""
        pool = self._executor()
        futures = [pool.submit(self.score, c, t) for c, t in zip(completions, tasks)]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as exc:  # a bug or a malformed task: that row's verifier_error
                out.append(crash_score(self, exc))
        return out

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-call")
            return self._pool

    def _key(self, prompt: str) -> str:
        sent = json.dumps([self.url, self.model, self.system, self.max_tokens, self.temperature, prompt])
        return hashlib.sha256(sent.encode()).hexdigest()

    def _judge(self, prompt: str) -> tuple[float, bool]:
        """The judge's raw score for ``prompt`` and whether it came from the cache (or a request in flight)."""
        if not self.cache:
            return self._call(prompt), False
        key = self._key(prompt)
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key], True
            waiting = self._inflight.get(key)
            if waiting is None:
                mine: Future = Future()
                self._inflight[key] = mine
        if waiting is not None:
            return waiting.result(), True  # the same request is on its way: its answer (or its error)
        try:
            raw = self._call(prompt)
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            mine.set_exception(exc)
            raise
        with self._lock:
            del self._inflight[key]
            self._done[key] = raw
            while len(self._done) > self.cache_size:
                self._done.popitem(last=False)
        mine.set_result(raw)
        return raw, False

    def _call(self, prompt: str) -> float:
        """One score from the endpoint, with this verifier's retries; raises `JudgeError`."""
        for attempt in range(self.retries + 1):
            try:
                return self.parse(self._post(prompt))
            except JudgeError as exc:
                if attempt == self.retries or not exc.retryable:
                    raise
            time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _post(self, prompt: str) -> str:
        """The reply text of one request; any failure is a `JudgeError`."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.endpoint == "chat":
            system = [{"role": "system", "content": self.system}] if self.system else []
            body["messages"] = system + [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        request = urllib.request.Request(self.url, json.dumps(body).encode(), self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace") if exc.fp is not None else ""
            raise JudgeError(f"HTTP {exc.code} from {self.url}: {detail}".rstrip(": "),
                             retryable=exc.code not in _NO_RETRY) from exc
        except (TimeoutError, urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                raise JudgeError(f"no answer from {self.url} within {self.timeout_s:g}s") from exc
            raise JudgeError(f"cannot reach {self.url}: {reason}") from exc
        except ValueError as exc:
            raise JudgeError(f"reply from {self.url} is not JSON: {exc}") from exc
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"reply from {self.url} has no {self.endpoint} choice: {str(reply)[:200]}") from exc
        if not isinstance(text, str):
            raise JudgeError(f"reply from {self.url} has no text: {str(reply)[:200]}")
        return text

    def parse(self, reply: str) -> float:
        """The score in ``reply`` (the last match of ``score_regex``); `JudgeError` when there is none or
        it is outside ``[min_score, max_score]``."""
        matches = self.score_re.findall(reply)
        if not matches:
            raise JudgeError(f"no score in the judge's reply: {reply[-200:]!r}")
        last = matches[-1]
        try:
            value = float(last[0] if isinstance(last, tuple) else last)
        except ValueError as exc:
            raise JudgeError(f"unreadable score {last!r} in the judge's reply") from exc
        if not self.min_score <= value <= self.max_score:
            raise JudgeError(f"judge score {value:g} outside [{self.min_score:g}, {self.max_score:g}]")
        return value

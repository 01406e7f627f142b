"""reasoning-gym's own scorers as a verifier (`reasoning_gym`).

``verifiers.get("reasoning_gym").score(completion, {"dataset": "chain_sum", "entry": entry})``
where ``entry`` is an item as ``reasoning_gym.create_dataset("chain_sum", ...)`` yields it, or
its JSON form from `encode_entry` (how a task row carries it: tuples, sets and int-keyed dicts
tagged so that the scorer sees the very item it was written for). An optional
``"options"`` key holds the generator options the entry was made with; the scorer is then that
configured dataset's ``score_answer`` (a few scorers read their config, e.g. ``decimal_arithmetic``'s
precision); without it, the default-config scorer, as ``reasoning_gym.get_score_answer_fn(name)``.

**Extraction** (pure Python, in the caller's process), the rule our ``countdown`` and ``code``
verifiers follow:

* the last closed ``<answer>…</answer>`` block, stripped (reasoning-gym's ``extract_answer``
  also takes the last block);
* an ``<answer>`` opened and never closed (a truncated generation): no answer;
* no ``<answer>`` tag at all: the text after the last ``</think>`` (the whole completion when
  there is none) is a bare answer, when it is at most ``MAX_BARE_CHARS`` long; so ``score("-4",
  task)`` works like the ``math`` verifier's bare answers, while a long untagged ramble is no
  answer (reasoning-gym's default scorer gives partial credit to any text that *contains* the
  answer, so reading a whole monologue as the answer would pay for dumping numbers).

No answer is an ordinary wrong answer: ``Score(0.0, False, {"extracted": 0.0})``, as in ``math``.

**Scoring** runs reasoning-gym's ``score_answer(answer, entry)`` in a killable worker process
(`verifiers.pool`, the pool the ``math`` verifier uses; its zygote imports reasoning_gym once),
so a scorer that hangs or eats memory costs ``timeout`` seconds and an error, never the run.
``reward`` is the dataset's score (reasoning-gym gives partial credit on some datasets; set
``partial_credit=False`` for 1/0), ``correct`` is ``score == 1``. A scorer that raises is the
checker's failure: ``error`` is set (``"crash: ..."``), never a silent 0.

reasoning_gym is imported only inside the workers, so this module (and ``verifiers``) imports
without it; constructing the verifier without it installed is an ImportError naming the package.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from typing import Any

from verifiers.base import Score
from verifiers.batch import score_rows
from verifiers.pool import DEFAULT_MEMORY_MB

PACKAGE = "reasoning-gym==0.1.25"
MAX_BARE_CHARS = 200  # an untagged completion longer than this (after any </think>) has no answer
MAX_INPUT_CHARS = 200_000
_CHECK = "verifiers.reasoning_gym:score_in_worker"
_PRELOAD = ("verifiers.reasoning_gym", "reasoning_gym")


def extract_answer(completion: str) -> str | None:
    """The answer text of ``completion`` (see the module doc), or None when it has none."""
    end = completion.rfind("</answer>")
    if end >= 0:
        start = completion.rfind("<answer>", 0, end)
        if start < 0:
            return None
        return completion[start + len("<answer>"):end].strip()
    if "<answer>" in completion:
        return None  # opened, never closed: cut off
    think = completion.rfind("</think>")
    bare = completion[think + len("</think>"):] if think >= 0 else completion
    bare = bare.strip()
    return bare if bare and len(bare) <= MAX_BARE_CHARS and "<think>" not in bare else None


# ---- entries as JSON ---------------------------------------------------------------------

_TUPLE, _ITEMS, _SET = "__tuple__", "__items__", "__set__"


def encode_entry(value: Any) -> Any:
    """A reasoning-gym item as plain JSON that `decode_entry` turns back into the same object.

    Items hold tuples (ARC grids, difficulty ranges), dicts with int keys (``graph_color``) and
    sometimes sets, which a plain JSON round trip would change into lists and string keys; some
    scorers compare against them (an ARC grid as a list is not the tuple the scorer builds), so
    they are tagged: ``{"__tuple__": [...]}``, ``{"__items__": [[key, value], ...]}``,
    ``{"__set__": [...]}``. Anything else that is not JSON is a TypeError naming it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [encode_entry(v) for v in value]}
    if isinstance(value, list):
        return [encode_entry(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {_SET: [encode_entry(v) for v in value]}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not ({_TUPLE, _ITEMS, _SET} & set(value)):
            return {k: encode_entry(v) for k, v in value.items()}
        return {_ITEMS: [[encode_entry(k), encode_entry(v)] for k, v in value.items()]}
    raise TypeError(f"a reasoning-gym item holds a {type(value).__name__}, which has no JSON form")


def decode_entry(value: Any) -> Any:
    """The inverse of `encode_entry`; an item that was never encoded comes back unchanged."""
    if isinstance(value, list):
        return [decode_entry(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_entry(v) for v in value)
    if isinstance(value, Mapping):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == _TUPLE and isinstance(inner, list):
                return tuple(decode_entry(v) for v in inner)
            if key == _SET and isinstance(inner, list):
                return {decode_entry(v) for v in inner}
            if key == _ITEMS and isinstance(inner, list):
                return {_hashable(decode_entry(k)): decode_entry(v) for k, v in inner}
        return {k: decode_entry(v) for k, v in value.items()}
    return value


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# ---- inside a worker process -------------------------------------------------------------

_scorers: dict[tuple[str, str], Any] = {}


def _scorer(dataset: str, options_json: str):
    key = (dataset, options_json)
    if key not in _scorers:
        import reasoning_gym

        options = json.loads(options_json)
        if options is None:
            _scorers[key] = reasoning_gym.get_score_answer_fn(dataset)
        else:  # the dataset as it was configured when the entry was generated
            _scorers[key] = reasoning_gym.create_dataset(dataset, **options).score_answer
    return _scorers[key]


def score_in_worker(answer: str, dataset: str, entry: dict, options_json: str, partial_credit: bool) -> Score:
    """reasoning-gym's verdict on ``answer`` (runs in a worker; exceptions become ``crash`` errors)."""
    raw = _scorer(dataset, options_json)(answer, decode_entry(entry))
    value = float(raw)
    if not 0.0 <= value <= 1.0:  # NaN included: not a score we can train on
        return Score(0.0, None, {"extracted": 1.0}, f"bad_score: {dataset} scorer returned {raw!r}")
    correct = value >= 1.0
    reward = value if partial_credit else float(correct)
    return Score(reward, correct, {"extracted": 1.0, "rg_score": value})


# ---- the verifier ---------------------------------------------------------------------------


class ReasoningGymVerifier:
    """The dataset's own ``score_answer`` on the answer in the completion's ``<answer>`` tags.

    timeout: seconds per check (a check past it is ``Score(error="timeout")``).
    workers: worker processes started on first use (``score_batch`` may grow the pool).
    partial_credit: reward the dataset's partial scores (True, reasoning-gym's behaviour) or
        only full marks (False: 1.0 when the score is 1, else 0.0).
    """

    name = "reasoning_gym"
    requires: tuple = ("dataset", "entry")

    def __init__(self, timeout: float = 10.0, workers: int = 2, partial_credit: bool = True,
                 memory_mb: int | None = DEFAULT_MEMORY_MB):
        if importlib.util.find_spec("reasoning_gym") is None:
            raise ImportError(f"the reasoning_gym verifier needs the reasoning-gym package: pip install '{PACKAGE}'")
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.partial_credit = bool(partial_credit)
        self.memory_mb = memory_mb

    def _pool(self, workers: int | None = None):
        from verifiers.math.verifier import shared_pool  # one pool per preload, shared by every instance

        return shared_pool(max(self.workers, workers or 0), self.memory_mb, _PRELOAD)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        for key in self.requires:
            if key not in task:
                raise KeyError(f"task has no {key!r} field (keys: {sorted(task)})")
        dataset, entry = task["dataset"], task["entry"]
        if not isinstance(dataset, str) or not isinstance(entry, Mapping):
            raise TypeError(f"task['dataset'] must be a name and task['entry'] a reasoning-gym item, got "
                            f"{type(dataset).__name__} and {type(entry).__name__}")
        if not isinstance(completion, str):
            raise TypeError(f"completion must be str, got {type(completion).__name__}")
        if len(completion) > MAX_INPUT_CHARS:
            return Score(0.0, None, {"extracted": 0.0}, "input_too_large")
        answer = extract_answer(completion)
        if answer is None:
            return Score(0.0, False, {"extracted": 0.0})
        options = json.dumps(task.get("options"), sort_keys=True)
        return self._pool().score(_CHECK, answer, dataset, dict(entry), options, self.partial_credit,
                                  timeout=self.timeout)

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        """Score on ``workers`` processes at once; a row that raises gets its own crash score."""
        workers = max(1, workers)
        self._pool(workers)
        return score_rows(self, completions, tasks, workers)

"""The ``reward_model`` verifier: a local Hugging Face sequence-classification model as a reward.

``verifiers.get("reward_model", model="path/to/rm")`` scores ``prompt + completion`` with
``AutoModelForSequenceClassification``: a one-label head's logit is the reward (or a chosen label's
logit, or the probability: ``output: prob``), optionally standardised over each scored batch.

Where it runs, and why: in one worker process of its own (a `verifiers.pool.WorkerPool` of size 1,
started on first use from a fresh interpreter that imports torch and transformers, never forked from
the trainer). ``torch.set_num_threads`` is process-wide, so a model run on the trainer's scoring threads
would share (and fight over) the learner's intra-op thread pool and its GIL; in its own process the
model gets exactly ``threads`` threads (default 1), the trainer's process never imports anything for it,
and a model that hangs or dies is killed and replaced without touching the run. The trainer's `Scorer`
already scores groups on threads while generation continues, so the forward passes are off the
learner's critical path; batches from several scoring threads queue for the one process.

Failures are never a reward of 0: a model that cannot load (a missing or corrupt file), runs out of
memory, raises, times out (``timeout_s``, model loading included) or whose worker dies is
``infra_error``; a reward that is not a finite number (NaN, inf) is ``verifier_error``. Both are retried
(``rewards.retries``), then kept out of training.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from verifiers import Score
from verifiers.pool import CheckFailed, CheckTimeout, WorkerPool

WORKER = "rlvr.rewards._rm_worker:score_texts"
INPUTS = ("auto", "chat", "text")
NORMALIZE = ("none", "batch")


class RewardModelVerifier:
    """``reward_model`` (kwargs are a ``rewards:`` term's ``kwargs``).

    model:      a local directory (or hub id) of a sequence-classification model and its tokenizer.
    batch_size: texts per forward pass (one worker call each).
    normalize:  ``none``, or ``batch``: each reward standardised, ``(r - mean) / (std + 1e-6)``, over the
                rows of one ``score_many`` call that scored cleanly (in ``rlvr train``: one group, the
                ``n`` completions of a prompt; a row alone gets 0). The raw value is ``metrics["raw"]``.
    max_length: tokens per text; a longer text loses its start (the reply's end, where a reward model
                reads, is kept).
    label:      which logit is the reward (default 0, the only one of a ``num_labels=1`` head).
    output:     ``logit`` (default), or ``prob``: sigmoid of a one-label head, else the label's softmax.
    input:      ``text``: the row's rendered prompt (``prompt_text``, else its ``question``) followed by the
                completion, the exact text the policy saw and wrote; ``chat``: the tokenizer's chat template
                over a user turn (``question``) and an assistant turn (the completion), as off-the-shelf
                reward models are trained; ``auto`` (default): ``chat`` when the tokenizer has a template.
    threads:    torch threads of the model's process; ``device``: ``cpu`` or ``cuda[:i]``; ``dtype``.
    timeout_s:  per batch, the first one's model loading included; ``memory_mb``: the process's address
                space limit (None: none).
    name:       the name in a rubric (two reward models in one rubric need two names).
    """

    requires = (("prompt_text", "question"),)

    def __init__(self, model: str, batch_size: int = 16, normalize: str = "none", max_length: int = 1024,
                 label: int | None = None, output: str = "logit", input: str = "auto", threads: int = 1,
                 device: str = "cpu", dtype: str = "float32", timeout_s: float = 300.0,
                 memory_mb: int | None = None, name: str = "reward_model"):
        if not model:
            raise ValueError("reward_model needs model: a directory of a sequence-classification model")
        if Path(model).expanduser().is_absolute() or model.startswith((".", "~")):
            if not Path(model).expanduser().is_dir():  # a local path: say so now, not as errors mid-run
                raise ValueError(f"reward_model model={model!r} is not a directory")
            model = str(Path(model).expanduser().resolve())
        if normalize not in NORMALIZE:
            raise ValueError(f"reward_model normalize must be one of {NORMALIZE}, got {normalize!r}")
        if output not in ("logit", "prob"):
            raise ValueError(f"reward_model output must be logit or prob, got {output!r}")
        if input not in INPUTS:
            raise ValueError(f"reward_model input must be one of {INPUTS}, got {input!r}")
        if batch_size < 1 or max_length < 1 or threads < 1 or timeout_s <= 0 or (label is not None and label < 0):
            raise ValueError("reward_model needs batch_size, max_length, threads >= 1, timeout_s > 0, label >= 0")
        self.name, self.batch_size, self.normalize = name, int(batch_size), normalize
        self.timeout_s, self.memory_mb = float(timeout_s), memory_mb
        self.spec = {"model": model, "max_length": int(max_length), "label": label, "output": output,
                     "input": input, "threads": int(threads), "device": device, "dtype": dtype}
        self._lock = threading.Lock()
        self._pool: WorkerPool | None = None

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        return self.score_many([completion], [task], 1)[0]

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        """Rewards of every row, ``batch_size`` texts per forward pass in the model's process (``workers`` is
        not used: the one process serves every caller in turn)."""
        items = [(str(t.get("prompt_text") or ""), str(t.get("question") or ""), c) for c, t in zip(completions, tasks)]
        scores: list[Score] = []
        for start in range(0, len(items), self.batch_size):
            scores += self._batch(items[start:start + self.batch_size])
        if self.normalize == "batch":
            scores = standardised(scores)
        return scores

    def _batch(self, items: list[tuple[str, str, str]]) -> list[Score]:
        def failed(message: str, outcome: str = "infra_error") -> list[Score]:
            return [Score(0.0, None, {}, f"reward_model: {message}", outcome) for _ in items]

        try:
            values = self._workers().call(WORKER, self.spec, items, timeout=self.timeout_s)
        except CheckTimeout:
            return failed(f"timeout: no rewards within {self.timeout_s:g}s (its process was killed)")
        except CheckFailed as exc:  # cannot load, out of memory, a forward that raised
            return failed(f"crash: {exc}")
        except Exception as exc:  # InfraError: its process died or cannot start
            return failed(f"{type(exc).__name__}: {exc}")
        if not isinstance(values, list) or len(values) != len(items):
            return failed(f"crash: {len(items)} texts but {values!r:.100} rewards", "verifier_error")
        return [Score(v, None, {"raw": v}) if math.isfinite(v) else
                Score(0.0, None, {}, f"reward_model: reward is {v}", "verifier_error") for v in map(float, values)]

    def _workers(self) -> WorkerPool:
        with self._lock:  # started on first use; one that failed to start is tried again next time
            if self._pool is None:
                self._pool = WorkerPool(size=1, timeout=self.timeout_s, preload=("rlvr.rewards._rm_worker",),
                                        memory_mb=self.memory_mb)
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def standardised(scores: list[Score]) -> list[Score]:
    """``scores`` with each clean reward standardised over the clean ones (failed rows untouched)."""
    clean = [s.reward for s in scores if s.trainable]
    if not clean:
        return scores
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((r - mean) ** 2 for r in clean) / len(clean))
    return [Score((s.reward - mean) / (std + 1e-6), s.correct, s.metrics) if s.trainable else s for s in scores]

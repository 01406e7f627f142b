"""Run logging: JSONL metrics, TensorBoard events and the reward/accuracy plot."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    """Appends one JSON object per record to ``run_dir/metrics.jsonl`` (+ TensorBoard)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, purge_step: int | None = None,
                 trackers: list | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._fh = self.path.open("a")
        self._tb = None
        self.trackers = trackers or []  # rlvr.trackers: wandb, mlflow, trackio
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run drops the events logged after its checkpoint
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        record = {"kind": kind, "step": step, **{k: float(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        for tracker in self.trackers:
            tracker.log(step, metrics, kind)
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
            self._tb.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        for tracker in self.trackers:
            tracker.close()
        if self._tb is not None:
            self._tb.close()


class SampleLogger:
    """Every ``every`` steps, ``per_step`` completions (one per prompt) with their rewards go to
    ``run_dir/samples.jsonl`` and TensorBoard text, so what the policy writes can be read."""

    def __init__(self, run_dir: str | Path, every: int, per_step: int, metrics: MetricsLogger | None = None):
        self.path, self.every, self.per_step, self.metrics = Path(run_dir) / "samples.jsonl", every, per_step, metrics

    def log(self, step: int, scored: list) -> None:
        if not self.every or step % self.every:
            return
        records = []
        for sg in scored[: self.per_step]:
            comp, score = sg.group.completions[0], sg.scores[0]
            context = {k: v for k, v in sg.row.items() if k not in ("prompt_text", "prompt_ids", "question")}
            records.append({"step": step, "question": sg.row.get("question"), "completion": comp.text,
                            "reward": score.reward, "correct": score.correct, "error": score.error,
                            "reference": str(context)[:500]})
        with self.path.open("a") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        if self.metrics is not None:
            body = "\n\n".join(f"**reward {r['reward']:.2f}** ({r['reference'][:120]})\n\n    {r['completion'][:600]}"
                                 for r in records)
            self.metrics.text("samples", body, step)


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_reward_accuracy(metrics_path: str | Path, out_png: str | Path, title: str = "RL run") -> Path:
    """Training reward and held-out greedy pass@1 against step; mean response length beside them
    (the R1-Zero signature is that it grows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, (ax, ax_len) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], label="train reward (mean)", alpha=0.8)
        ax.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy", alpha=0.6)
    if evals:
        ax.plot([r["step"] for r in evals], [r["pass@1"] for r in evals], "o-", label="held-out greedy pass@1")
    ax.set_xlabel("RL step")
    ax.set_ylim(-0.02, 1.12)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{title}: reward and held-out accuracy")
    if train:
        ax_len.plot([r["step"] for r in train], [r["response_len_mean"] for r in train], color="tab:purple")
    ax_len.set_xlabel("RL step")
    ax_len.set_ylabel("mean response length (tokens)")
    ax_len.grid(alpha=0.3)
    ax_len.set_title("response length")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def print_table(rows: list[tuple], headers: tuple) -> None:
    """``rows`` as a plain-text table under ``headers``, columns as wide as their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))

"""Experiment trackers beside the JSONL metrics: ``logging.report_to: [tensorboard, wandb, trackio, mlflow]``.

Each tracker is an optional extra, imported only when asked for; a missing package is an error
that names the extra, raised before any model loads (``check_trackers``). Every tracker gets the
resolved config as the run's config. None of them needs a network here: wandb follows
``WANDB_MODE`` (``offline`` writes ``run_dir/wandb``), mlflow logs to ``MLFLOW_TRACKING_URI`` or
else a local file store in ``run_dir/mlruns``, trackio keeps a local database (``TRACKIO_DIR``).
TensorBoard is written by ``rlvr.logging.MetricsLogger`` itself.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

# tracker -> (module to import, pip extra)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow")}


def check_trackers(report_to: list[str]) -> None:
    for name in report_to:
        if name not in PACKAGES:
            raise ValueError(f"logging.report_to: unknown tracker {name!r}; known: {', '.join(PACKAGES)}")
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"logging.report_to: {name!r} needs the `{module}` package, which is not installed; "
                              f"install the extra: pip install -e '.[{extra}]' (or drop {name!r} from report_to)")


def _scalars(metrics: dict[str, float], kind: str) -> dict[str, float]:
    return {f"{kind}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], project: str, resume: bool):
        import wandb

        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config,
                              resume="allow" if resume else None, reinit="finish_previous")

    def log(self, step: int, metrics: dict[str, float], kind: str) -> None:
        self.run.log(_scalars(metrics, kind), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], project: str, resume: bool):
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):  # local files, no server (mlflow 3 asks for an opt-in)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(project)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params(_flat(config))
        mlflow.log_dict(config, "config.json")

    def log(self, step: int, metrics: dict[str, float], kind: str) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in _scalars(metrics, kind).items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioTracker:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], project: str, resume: bool):
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=name, config=config, resume="allow" if resume else "never")

    def log(self, step: int, metrics: dict[str, float], kind: str) -> None:
        self.trackio.log(_scalars(metrics, kind), step=step)

    def close(self) -> None:
        self.trackio.finish()


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker, "trackio": TrackioTracker}


def open_trackers(report_to: list[str], run_dir: str | Path, config: dict[str, Any], project: str = "rlvr",
                  resume: bool = False) -> list[Any]:
    """The non-TensorBoard trackers of ``report_to``, started with ``config`` as the run's config."""
    check_trackers(report_to)
    run_dir = Path(run_dir)
    return [TRACKERS[name](run_dir, run_dir.name, config, project, resume) for name in report_to if name in TRACKERS]

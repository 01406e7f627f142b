"""Experiment trackers beside the JSONL metrics: ``logging.report_to: [tensorboard, wandb, trackio, mlflow]``.

Each tracker is an optional extra, imported only when asked for; a missing package is an error
that names the extra, and wandb without a login (and not offline) is an error saying how to log
in, both raised before any data or model loads (``check_trackers``). Every tracker gets the
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
    """Every tracker of ``report_to`` is known, installed and (wandb) logged in; else one error naming it."""
    from rlvr.config import ConfigError
    from rlvr.errors import MissingPackageError, TrackerError

    for name in report_to:
        if name not in PACKAGES:
            raise ConfigError(f"logging.report_to: unknown tracker {name!r}; known: {', '.join(PACKAGES)}")
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise MissingPackageError(f"logging.report_to: {name!r} needs the `{module}` package, which is not "
                                      f"installed; install the extra: pip install -e '.[{extra}]' (or drop {name!r} "
                                      "from report_to)")
        if name == "wandb" and not wandb_can_log():
            raise TrackerError("logging.report_to: 'wandb' has no login (no WANDB_API_KEY, and no key for "
                               f"{_wandb_host()} in {str(_netrc_path())!r}): run `wandb login`, set WANDB_API_KEY, "
                               "or set WANDB_MODE=offline to write run_dir/wandb for a later `wandb sync`")


def _wandb_host() -> str:
    from urllib.parse import urlsplit

    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return urlsplit(url).netloc or url


def _netrc_path() -> Path:
    """Where wandb reads its key: $NETRC, else ~/.netrc (~/_netrc when only that exists)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix, windows = Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()
    return windows if windows.exists() and not unix.exists() else unix


def wandb_can_log() -> bool:
    """Whether ``wandb.init`` will find credentials, read the way wandb reads them (its environment
    variables, then ``~/.netrc``) without importing wandb: offline and disabled modes need none."""
    import netrc

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") \
            or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return True
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        return netrc.netrc(str(_netrc_path())).authenticators(_wandb_host()) is not None
    except (OSError, netrc.NetrcParseError):  # no file, or one wandb could not read either
        return False


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
    from rlvr.errors import TrackerError

    check_trackers(report_to)
    run_dir = Path(run_dir)
    opened = []
    for name in report_to:
        if name not in TRACKERS:
            continue
        try:
            opened.append(TRACKERS[name](run_dir, run_dir.name, config, project, resume))
        except Exception as exc:  # the tracker's own refusal (a revoked key, an unreachable server): one line
            if type(exc).__module__.split(".")[0] != name:
                raise  # not the tracker's own error class: a bug, keep its traceback
            for tracker in opened:
                tracker.close()
            raise TrackerError(f"logging.report_to: {name!r} did not start: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return opened

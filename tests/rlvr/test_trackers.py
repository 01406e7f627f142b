"""Experiment trackers in offline/local mode (no network): the run's config and metrics arrive;
a missing package is an error naming the extra, before any model loads."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from rlvr.config import TrainConfig
from rlvr.trackers import check_trackers, open_trackers


def wandb_log_bytes(pattern_dir, needle: bytes, timeout: float = 20.0) -> bytes:
    """The offline run's record log once ``needle`` is in it: wandb's service process writes it
    asynchronously, shortly after ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        logs = list(pattern_dir.glob("offline-run-*/*.wandb"))
        data = logs[0].read_bytes() if len(logs) == 1 else b""
        if needle in data or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def test_report_to_defaults_follow_tensorboard_flag():
    assert TrainConfig(model="m").logging.report_to == ["tensorboard"]
    assert TrainConfig(model="m", logging={"tensorboard": False}).logging.report_to == []
    cfg = TrainConfig(model="m", logging={"report_to": ["wandb"]})
    assert cfg.logging.tensorboard is False


def test_missing_tracker_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r"'wandb' needs the `wandb` package.*pip install -e '\.\[wandb\]'"):
        check_trackers(["tensorboard", "wandb"])
    with pytest.raises(ValueError, match="unknown tracker 'comet'"):
        check_trackers(["comet"])


@pytest.mark.e2e  # wandb starts its service process
def test_wandb_offline_gets_config_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = {"model": "m", "optim": {"lr": 1e-4}}
    (tracker,) = open_trackers(["tensorboard", "wandb"], tmp_path / "run", config, project="rlvr-test")
    tracker.log(1, {"reward_mean": 0.5, "pass@1": 0.25}, "train")
    tracker.log(2, {"reward_mean": 0.75, "nan": float("nan")}, "train")
    tracker.close()
    data = wandb_log_bytes(tmp_path / "run" / "wandb", b"train/pass@1")  # what `wandb sync` would upload
    assert b"optim" in data and b"0.0001" in data  # the config
    assert b"train/reward_mean" in data and b"train/pass@1" in data  # the metrics


def test_mlflow_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {"model": "m", "optim": {"lr": 1e-4}}
    (tracker,) = open_trackers(["mlflow"], tmp_path / "run", config, project="rlvr-test")
    tracker.log(1, {"reward_mean": 0.5, "pass@1": 0.25}, "eval")
    tracker.close()
    params = list((tmp_path / "run" / "mlruns").rglob("params/optim.lr"))
    assert params and params[0].read_text().strip() == "0.0001"
    metric = list((tmp_path / "run" / "mlruns").rglob("metrics/eval/pass_at_1"))
    assert metric and metric[0].read_text().split()[1] == "0.25"
    assert json.loads(next((tmp_path / "run" / "mlruns").rglob("config.json")).read_text()) == config


@pytest.mark.e2e  # builds a micro model in its body and trains it
def test_training_run_reports_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from rlvr.archs import build_model, micro_config
    from rlvr.config import load_config
    from rlvr.loop import train
    from rlvr.pretrain import local_tokenizer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tok = local_tokenizer()
    model = build_model(micro_config("llama", len(tok)), tok, tmp_path / "model")
    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
        f"model={model}", f"run_dir={run_dir}", "engine.kind=hf", "train.steps=1", "train.prompts_per_step=2",
        "sampling.n=2", "sampling.max_tokens=8", "eval.every=0", "eval.num_prompts=2", "eval.k=1", "eval.max_tokens=4",
        "logging.progress=false", "logging.report_to=[tensorboard,wandb]", "logging.project=rlvr-test"])
    train(cfg)
    data = wandb_log_bytes(run_dir / "wandb", b"eval/pass@1")
    assert b"train/reward_mean" in data and b"eval/pass@1" in data and str(model).encode() in data
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

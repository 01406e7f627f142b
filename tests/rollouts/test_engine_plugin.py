"""An engine in one file, found through the ``rlvr.engines`` entry points: a real pip install of
examples/engine_plugin, then the registry, the config and a training run see its kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # a pip install and `rlvr` subprocesses

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SRC = ROOT / "examples" / "engine_plugin"
SMALL = ["train.prompts_per_step=4", "sampling.n=4", "sampling.max_tokens=8", "eval.every=0", "eval.num_prompts=4",
         "eval.k=1", "eval.max_tokens=8", "logging.progress=false", "logging.tensorboard=false", "train.threads=1"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """pip-install the example plugin into a private directory; the environment of a process that sees it."""
    work = tmp_path_factory.mktemp("engine-plugin")
    shutil.copytree(PLUGIN_SRC, work / "src")  # builds leave files next to the sources; not in the repo
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(work / "site"), str(work / "src")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = os.pathsep.join(filter(None, [str(work / "site"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def rlvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_an_installed_engine_plugin_is_a_kind_with_its_own_fields(plugin_env):
    from rollouts.config import ENGINES

    assert "example-unbatched" not in ENGINES  # not installed in this process
    out = rlvr(plugin_env, "config", "engine")
    assert out.returncode == 0, out.stderr
    assert "example-unbatched" in out.stdout and "max_new_tokens_cap" in out.stdout
    # another kind's field is an error naming the kind, as for the built-in engines
    bad = rlvr(plugin_env, "train", "--config", "configs/tiny_r1zero.yaml", "--dry-run", "model=m",
               "engine.kind=example-unbatched", "engine.kv_cache_gib=1")
    assert bad.returncode == 2 and "engine.kv_cache_gib: unknown key for engine.kind=example-unbatched" in bad.stderr


def test_a_run_trains_on_the_plugin_engine(plugin_env, micro_model, tmp_path):
    """Two steps on the plugin's engine: the start-up parity probe against the learner passes, weights sync."""
    run = tmp_path / "run"
    out = rlvr(plugin_env, "train", "--config", "configs/tiny_r1zero.yaml", f"model={micro_model}", f"run_dir={run}",
               "train.steps=2", "engine.kind=example-unbatched", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parity probe: engine and learner log-probs agree" in out.stdout
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "train"' in line for line in lines) == 2

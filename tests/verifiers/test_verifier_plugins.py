"""Plugin discovery through the ``rlvr.verifiers`` entry points, with a real pip install of
examples/verifier_plugin, and a crashing plugin that must show up as an error count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

import verifiers
from verifiers.batch import summarize

# e2e: pip-installs the example plugin and runs `rlvr verify` in a subprocess
pytestmark = pytest.mark.e2e

PLUGIN_SRC = ROOT / "examples" / "verifier_plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """pip-install the example plugin into a private directory and put it on sys.path."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(PLUGIN_SRC, src)  # builds leave files next to the sources; not in the repo
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(target), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("rlvr_example_verifier")]:
        del sys.modules[name]


def test_not_available_before_install():
    assert "example-keyword" not in verifiers.available()
    with pytest.raises(KeyError, match="unknown verifier 'example-keyword'"):
        verifiers.get("example-keyword")


def test_installed_plugin_is_discovered(plugin_path):
    assert {"example-keyword", "example-crash"} <= set(verifiers.available())
    v = verifiers.get("example-keyword")
    assert isinstance(v, verifiers.Verifier)
    assert v.score("The capital is Paris.", {"keyword": "paris"}).correct is True
    assert v.score("The capital is Lyon.", {"keyword": "paris"}).reward == 0.0
    assert verifiers.get("example-keyword", key="word").score("x", {"word": "x"}).correct


def test_crashing_plugin_is_an_error_count_not_a_silent_zero(plugin_path):
    crash = verifiers.get("example-crash")
    scores = verifiers.score_batch(crash, ["a", "b", "c"], [{}] * 3, workers=2)
    assert all(s.error and "RuntimeError: example plugin bug" in s.error for s in scores)
    summary = summarize(scores)
    assert summary["errors"] == 3.0 and summary["errors/crash"] == 3.0


def test_crashing_plugin_inside_a_rubric(plugin_path):
    rubric = verifiers.Rubric([(verifiers.get("example-keyword"), 1.0), (verifiers.get("example-crash"), 0.0)])
    scores = verifiers.score_batch(rubric, ["paris"], [{"keyword": "paris"}])
    assert scores[0].error is not None and scores[0].metrics["example-crash/error"] == 1.0
    assert summarize(scores)["errors"] == 1.0


def test_plugin_through_rlvr_verify(plugin_path, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"completion": c, "keyword": "paris"}) for c in ["paris!", "rome", "PARIS"]))
    launch = (
        "import argparse, importlib, sys\nfrom rlvr.cli import SUBCOMMANDS\n"
        "m = importlib.import_module(SUBCOMMANDS['verify'][0])\n"
        "p = argparse.ArgumentParser(); m.configure(p); sys.exit(m.run(p.parse_args(sys.argv[1:])))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_path), str(ROOT)]))
    args = ["--verifier", "example-keyword", str(rows), "--compare", "example-crash", "--no-progress"]
    out = subprocess.run([sys.executable, "-c", launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "correct                 2" in out.stdout
    assert "other errors            3" in out.stdout and "crash: 3" in out.stdout
    assert "example-crash=error" in out.stdout


def test_broken_entry_point_is_reported(tmp_path, monkeypatch):
    # A plugin whose module cannot be imported fails loudly, naming the entry point.
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlvr.verifiers]\nbroken = no_such_module_xyz:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "broken" in verifiers.available()
    with pytest.raises(ImportError, match="broken.*no_such_module_xyz"):
        verifiers.get("broken")

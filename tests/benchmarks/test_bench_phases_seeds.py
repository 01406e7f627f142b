"""benchmarks/phases_seeds.py: each seed's recipe, and the mean ± SE table with each stage's paired change."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
from helpers import ROOT


def _load_bench():
    spec = importlib.util.spec_from_file_location("phases_seeds", ROOT / "benchmarks" / "phases_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["phases_seeds"] = mod
    spec.loader.exec_module(mod)
    return mod


phases_seeds = _load_bench()


def test_seed_recipe_sets_seed_out_root_and_every_stages_threads(tmp_path):
    data = phases_seeds.seed_recipe("configs/recipes/phases.yaml", 2, tmp_path / "seed2", threads=1)
    assert data["seed"] == 2 and data["out_root"] == str(tmp_path / "seed2")
    by_name = {st["name"]: st for st in data["stages"]}
    assert by_name["base"]["overrides"][-1] == "train.threads=1"
    assert by_name["sft"]["overrides"][-1] == by_name["dpo"]["overrides"][-1] == "threads=1"
    assert by_name["rl_zero"]["overrides"][-1] == "train.threads=1"
    assert data["report"]["overrides"][-1] == "train.threads=1"
    changes = phases_seeds.stage_changes(data)
    assert ("SFT → DPO", "SFT", "dpo") in changes and ("RL-Zero", "base", "rl_zero") in changes
    assert ("SFT → DPO → RL", "SFT → DPO", "dpo_rl") in changes and len(changes) == 5


def test_summary_pairs_each_stage_with_its_input_seed_by_seed():
    per_seed = {0: {"base": 0.4, "SFT": 0.90, "SFT → DPO": 0.80},
                1: {"base": 0.4, "SFT": 0.60, "SFT → DPO": 0.51},
                2: {"base": 0.4, "SFT": 0.75, "SFT → DPO": 0.64}}
    changes = [("SFT", "base", "sft"), ("SFT → DPO", "SFT", "dpo")]
    res = phases_seeds.summarize(per_seed, changes)
    assert res["table"]["SFT"] == pytest.approx((0.75, 0.15 / math.sqrt(3)))
    dpo = res["changes"][1]
    assert dpo["diffs"] == pytest.approx([-0.10, -0.09, -0.11]) and dpo["mean"] == pytest.approx(-0.10)
    assert dpo["beyond_noise"]  # a drop of 0.10 ± 0.006 on every seed; unpaired it is lost in SFT's spread
    assert dpo["unpaired"]["within_noise"]

"""``train.async.stale: redraw`` with a real tiny model on the static engine: a group with a token older than
``max_staleness`` versions is drawn again on the engine's current weights (its own seeds, the same prompt), the
other groups stay as drawn, and a run that never goes stale redraws nothing."""

from __future__ import annotations

import pytest
from helpers import tiny_config, train_and_read

from rlvr.config import ConfigError
from rlvr.pipeline import StepRollouts
from rlvr.run import Run
from rlvr.train.batch import episodes_of
from rlvr.train.staleness import oldest_version

pytestmark = pytest.mark.e2e

REDRAW = ["engine.kind=static", "train.threads=1", "train.async.enabled=true", "train.async.stale=redraw",
          "eval.num_prompts=0"]


def _tokens(groups) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in sg.group.completions] for sg in groups]


def test_only_the_too_old_groups_are_redrawn_on_the_current_weights(micro_model, tmp_path):
    """Step 6 (learner version 5, k = 1) gets two groups sampled by version 0 and two by version 4: the first
    two are redrawn by the engine, which holds version 4, for the same prompts; the others are the same objects.
    A second redraw of the same rows samples the same tokens (the redraw's seeds are the step's own)."""
    cfg = tiny_config(*REDRAW, "train.steps=6", model=micro_model, run_dir=tmp_path / "r")
    with Run(cfg, progress=False) as run:
        run.start()  # queues the draw of step 1, on version 0
        old = run.pipe.take(1)
        run.pipe.call("load_weights", [(n, p.detach().clone()) for n, p in run.learners.policy_weights()], version=4)
        run.pipe.submit_draw(2, version=4)
        fresh = run.pipe.take(2)
        assert {oldest_version(episodes_of(sg)) for sg in old.batch} == {0}
        assert {oldest_version(episodes_of(sg)) for sg in fresh.batch} == {4}
        mixed = [*old.batch[:2], *fresh.batch[2:]]
        ro = StepRollouts(6, list(mixed), list(mixed), version=0)
        metrics = run.redraw_stale(6, ro)
        assert metrics["stale_redrawn"] == 2.0
        assert ro.batch[2:] == fresh.batch[2:] and all(a is b for a, b in zip(ro.batch[2:], fresh.batch[2:]))
        assert [sg.row for sg in ro.batch[:2]] == [sg.row for sg in old.batch[:2]]
        assert {oldest_version(episodes_of(sg)) for sg in ro.batch[:2]} == {4}
        assert len(ro.drawn) == 6 and ro.drawn[:4] == mixed  # the stale draws stay in the log
        again = run.pipe.redraw(6, [sg.row for sg in old.batch[:2]])
        assert _tokens(again) == _tokens(ro.batch[:2])
        # nothing stale: nothing redrawn, the batch untouched
        kept = list(ro.batch)
        assert run.redraw_stale(6, ro)["stale_redrawn"] == 0.0 and ro.batch == kept


def test_a_run_that_never_goes_stale_redraws_nothing(micro_model, tmp_path):
    steps, _ = train_and_read(tiny_config(*REDRAW, "train.steps=3", model=micro_model, run_dir=tmp_path / "r"))
    assert [r["stale_redrawn"] for r in steps] == [0.0, 0.0, 0.0]
    assert all(r["stale_dropped"] == 0.0 for r in steps)


def test_redraw_with_deterministic_in_flight_is_refused_naming_both():
    with pytest.raises((ConfigError, ValueError), match="train.async.stale=redraw.*deterministic"):
        tiny_config("train.async.in_flight=true", "train.async.deterministic=true", "train.async.stale=redraw")
    assert tiny_config("engine.kind=static", "train.async.in_flight=true",
                       "train.async.stale=redraw").train.async_.stale == "redraw"

"""`rlvr.evaluate`: the sampled format rate is measured on the pass@k samples, beside the greedy one.

A scripted engine stands in for the model here (this is a unit test of the metric's arithmetic;
the report test in tests/rlvr/stages/test_stages_recipe.py runs it on a real micro model)."""

from __future__ import annotations

from rlvr.evaluate import evaluate
from rollouts import Completion, Group
from verifiers import Rubric
from verifiers import get as get_verifier

GOOD = "<think> 1+1=2 </think> <answer>2</answer>"
BAD = "2"  # a quick guess without the R1 tags


class ScriptedEngine:
    """Greedy calls answer GOOD; sampled calls answer GOOD for the first ``good`` samples of a group, then BAD."""

    def __init__(self, good: int):
        self.good = good

    def generate(self, prompts, sampling, on_group=None):
        groups = []
        for i, ids in enumerate(prompts):
            texts = [GOOD] if sampling.temperature == 0 else [GOOD if j < self.good else BAD for j in range(sampling.n)]
            group = Group(prompt="", prompt_ids=list(ids),
                          completions=[Completion(t, [1] * len(t.split()), [0.0] * len(t.split()), "stop") for t in texts])
            groups.append(group)
            if on_group is not None:
                on_group(i, group)
        return groups


def test_sampled_format_rate_counts_the_pass_at_k_samples():
    rows = [{"prompt_ids": [5, 6], "question": "1+1", "answer": "2"} for _ in range(3)]
    rubric = Rubric([(get_verifier("arith"), 1.0), (get_verifier("r1_format"), 0.1)])
    m = evaluate(ScriptedEngine(good=1), rows, rubric, k=4, workers=1)
    assert m["format_rate"] == 1.0  # greedy: always well formed
    assert m["sampled_format_rate"] == 0.25  # 1 of 4 samples per prompt
    assert m["pass@1"] == 1.0 and m["pass@4"] == 1.0
    assert "sampled_format_rate" not in evaluate(ScriptedEngine(good=1), rows, rubric, k=1, workers=1)

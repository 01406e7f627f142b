"""Per-prompt seeds (``SamplingConfig.seeds``): a prompt's samples depend on its own seed, not on
the other prompts of the call, so a driver can split prompts over rollout workers freely."""

import pytest

from rollouts import SamplingConfig, make_engine

PROMPTS = [f"A conversation between User and Assistant.\nUser: Compute {a}+{b}.\nAssistant: <think>"
           for a, b in [(3, 4), (12, 5), (20, 9), (7, 7)]]


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_a_prompts_samples_follow_its_seed_not_its_neighbours(micro_model, kind):
    if kind == "vllm":
        pytest.importorskip("vllm")
    engine = make_engine(kind, micro_model)
    try:
        tok = engine.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]

        def ids_of(prompts, seeds):
            groups = engine.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_tokens=24, seeds=seeds))
            return [[c.token_ids for c in g.completions] for g in groups]

        together = ids_of(ids, [11, 22, 33, 44])
        alone = [ids_of([p], [s])[0] for p, s in zip(ids, [11, 22, 33, 44])]
        tail = ids_of(ids[2:], [33, 44])  # the later prompts first, in a call of their own
        split = ids_of(ids[:2], [11, 22]) + tail
        assert together == alone == split
        reseeded = ids_of(ids, [11, 22, 33, 45])
        assert reseeded[:3] == together[:3] and reseeded[3] != together[3]
    finally:
        engine.close()


def test_seed_and_seeds_are_exclusive():
    with pytest.raises(ValueError, match="seed or seeds"):
        SamplingConfig(seed=1, seeds=[1, 2])

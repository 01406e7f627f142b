"""The shared engine base (rollouts.base.EngineBase) and the one top-p nucleus (rollouts.sampling), without a model."""

from __future__ import annotations

import pytest
import torch

from rollouts import Completion, EngineBase, Group, SamplingConfig
from rollouts.sampling import nucleus, sample_inverse_cdf, sample_multinomial
from rollouts.types import prompt_seeds


class CharTokenizer:
    eos_token_id, pad_token_id = 0, None

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # the base tokenizes prompts without special tokens
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(map(chr, ids))


class EchoEngine(EngineBase):
    """Each sample repeats its prompt's seed: only a decode and a weight load, the rest is the base's."""

    def __init__(self):
        self._set_tokenizer(CharTokenizer())
        self.weights = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
        self.calls = []

    def _generate(self, prompt_ids, texts, seeds, sampling, finished):
        self.calls.append((prompt_ids, texts, seeds))
        groups = []
        for i, (ids, text) in enumerate(zip(prompt_ids, texts)):
            groups.append(Group(text, ids, [Completion("", [seeds[i] if seeds else -1], [0.0], "length")] * sampling.n))
            finished(i, groups[-1])
        return groups

    def weight_shapes(self):
        return {k: v.shape for k, v in self.weights.items()}

    def _load_weights(self, named_tensors):
        for name, t in named_tensors:
            self.weights[name].copy_(t)


def test_prompts_seeds_pad_and_latencies():
    engine = EchoEngine()
    assert engine.eos_id == 0 and engine.pad_id == 0  # no pad token: pad with EOS
    seen = []
    groups = engine.generate(["ab", [5, 6, 7]], SamplingConfig(n=2, seed=3), on_group=lambda i, g: seen.append(i))
    ids, texts, seeds = engine.calls[-1]
    assert ids == [[97, 98], [5, 6, 7]] and texts == ["ab", "\x05\x06\x07"]
    assert seeds == prompt_seeds(3, 2)  # the one seed rule
    assert [c.token_ids[0] for g in groups for c in g.completions] == [seeds[0]] * 2 + [seeds[1]] * 2
    assert seen == [0, 1] and len(engine.last_group_latencies) == 2
    engine.generate(["a"], SamplingConfig(seeds=[42]))
    assert engine.calls[-1][2] == [42]
    engine.generate(["a"], SamplingConfig())
    assert engine.calls[-1][2] is None  # unseeded: the engine draws its own randomness
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        engine.generate(["a"], SamplingConfig(seeds=[1, 2]))


def test_load_weights_refuses_unknown_names_and_wrong_shapes():
    engine = EchoEngine()
    engine.load_weights([("w", torch.ones(2, 3)), ("b", torch.full((3,), 2.0))])
    assert engine.weights["w"].eq(1).all() and engine.weights["b"].eq(2).all() and engine.last_sync_s > 0
    with pytest.raises(KeyError, match="unknown parameter 'nope'"):
        engine.load_weights([("nope", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"'b' has shape \(4,\), the engine's is \(3,\)"):
        engine.load_weights([("b", torch.zeros(4))])  # copy_ would have broadcast a (1,) silently


def test_both_draws_keep_the_same_nucleus():
    """The two draws differ only in how they consume randomness: both keep exactly ``nucleus``'s tokens."""
    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    s = SamplingConfig(temperature=0.8, top_p=0.7)
    probs = (logits / s.temperature).softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, nucleus(sorted_p, s.top_p) > 0)
    assert kept[:, :].sum(-1).min() >= 1
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    for _ in range(20):
        a = sample_multinomial(logits, s, gens)
        b, _ = sample_inverse_cdf(logits, torch.rand(64), s)
        assert kept.gather(-1, a[:, None]).all() and kept.gather(-1, b[:, None]).all()
    greedy = SamplingConfig(temperature=0.0)
    assert torch.equal(sample_multinomial(logits, greedy, gens), sample_inverse_cdf(logits, torch.rand(64), greedy)[0])

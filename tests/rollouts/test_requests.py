"""The request API every engine shares (``rollouts.base``): submit at any time, step, a background
runner, close, and weight loads between steps with per-token versions."""

from __future__ import annotations

import pytest
import torch

from rollouts import SamplingConfig, make_engine

PROMPTS = [f"A conversation between User and Assistant.\nUser: Compute {a}+{b}-{c}.\nAssistant: <think>"
           for a, b, c in [(3, 4, 2), (12, 5, 7), (20, 9, 1)]] + ["Hi", "User: 7*8?", "Tell me a story about a cat"]
LIMITS = [5, 30, 9, 22, 3, 17]
SEEDS = [11, 12, 13, 14, 15, 16]


def sampling(limit: int) -> SamplingConfig:
    return SamplingConfig(n=3, temperature=1.0, max_tokens=limit, stop=["}"])


def assert_same(a, b) -> None:
    assert len(a.completions) == len(b.completions)
    for x, y in zip(a.completions, b.completions):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
        assert torch.equal(torch.tensor(x.logprobs), torch.tensor(y.logprobs))


def run_until_idle(engine, limit: int = 10_000) -> None:
    for _ in range(limit):
        if engine.step() == 0:
            return
    raise AssertionError("the engine did not become idle")


def test_requests_submitted_at_any_step_sample_what_one_generate_samples(micro_model):
    """Requests submitted one by one between steps (so their rows enter a batch where others are at other
    steps, and, with room for two groups, wait for free slots) get the bits one ``generate`` call gives."""
    want = make_engine("static", micro_model, compile=False).generate(
        PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=max(LIMITS), stop=["}"], seeds=SEEDS,
                                max_tokens_each=LIMITS))
    engine = make_engine("static", micro_model, compile=False, max_batch=6)
    assert engine.steps_tokens
    futures = {}
    for step in range(200):
        for i in [i for i in range(len(PROMPTS)) if 3 * i == step]:  # a new request every third step
            futures[i] = engine.submit(PROMPTS[i], sampling(LIMITS[i]), seed=SEEDS[i])
        left = engine.step()
        if len(futures) == len(PROMPTS) and left == 0:
            break
    assert engine.step() == 0 and all(f.done() for f in futures.values())
    for i, w in enumerate(want):
        assert_same(futures[i].result(), w)
        assert futures[i].result().completions[0].versions is None  # no version was ever given


def test_weights_load_between_steps_and_tokens_record_their_version(micro_model, tmp_path):
    """A load between two steps: the running rows go on; tokens sampled before carry the old version, after
    it the new one; the tokens before are those of a run without the load and the ones after are not; a
    request that starts after the load samples exactly what a fresh engine with the new weights samples."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    s = SamplingConfig(n=2, temperature=1.0, max_tokens=12, ignore_eos=True)
    plain = make_engine("static", micro_model, compile=False)
    without = plain.submit(PROMPTS[0], s, seed=3)
    run_until_idle(plain)

    engine = make_engine("static", micro_model, compile=False)
    engine.load_weights(((k, v.detach().clone()) for k, v in policy.named_parameters()), version=7)
    assert engine.version == 7
    first = engine.submit(PROMPTS[0], s, seed=3)
    for _ in range(5):
        engine.step()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    engine.load_weights(((k, v.detach().clone()) for k, v in policy.named_parameters()), version=8)
    second = engine.submit(PROMPTS[1], s, seed=4)
    run_until_idle(engine)
    for before, after in zip(without.result().completions, first.result().completions):
        assert after.versions == [7] * 5 + [8] * 7
        assert after.token_ids[:5] == before.token_ids[:5] and after.logprobs[:5] == before.logprobs[:5]
        assert after.logprobs[5:] != before.logprobs[5:]
    assert all(c.versions == [8] * 12 for c in second.result().completions)

    policy.save_pretrained(tmp_path)
    engine.tokenizer.save_pretrained(tmp_path)
    fresh = make_engine("static", str(tmp_path), compile=False)
    again = fresh.submit(PROMPTS[1], s, seed=4)
    run_until_idle(fresh)
    assert_same(second.result(), again.result())


def test_background_runner_serves_submits_and_loads(micro_model):
    """``start()``: a thread steps the engine; requests submitted from here complete, ``generate`` waits on
    it, a load from here lands between two of its steps (versions never go back), ``close()`` ends it."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    engine = make_engine("static", micro_model, compile=False)
    engine.start()
    s = SamplingConfig(n=2, temperature=1.0, max_tokens=40, ignore_eos=True)
    engine.load_weights(policy.named_parameters(), version=1)
    futures = [engine.submit(p, s, seed=i) for i, p in enumerate(PROMPTS)]
    engine.load_weights(policy.named_parameters(), version=2)
    groups = engine.generate(PROMPTS[:2], SamplingConfig(n=1, max_tokens=4, seed=1))
    assert [len(g.completions[0].token_ids) for g in groups] == [4, 4]
    for f in futures:
        for c in f.result(timeout=300).completions:
            assert len(c.versions) == 40 and c.versions == sorted(c.versions) and set(c.versions) <= {1, 2}
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(PROMPTS[0], s)


def test_close_fails_running_and_queued_requests(micro_model):
    engine = make_engine("static", micro_model, compile=False, max_batch=2)  # one group of 2 at a time
    s = SamplingConfig(n=2, temperature=1.0, max_tokens=30, ignore_eos=True)
    running, queued = engine.submit(PROMPTS[0], s, seed=1), engine.submit(PROMPTS[1], s, seed=2)
    engine.step()
    assert running.running() and not queued.running()
    engine.close()
    for f in (running, queued):
        with pytest.raises(RuntimeError, match="closed"):
            f.result(timeout=0)


def test_hf_engine_steps_through_the_batched_fallback(micro_model):
    """An engine that cannot step token by token runs everything queued as one batched call in ``step``:
    the groups are those of ``generate`` with the same seeds, and every token carries the engine's version."""
    engine = make_engine("hf", micro_model)
    assert not engine.steps_tokens
    s = SamplingConfig(n=2, temperature=1.0, max_tokens=8)
    want = engine.generate(PROMPTS[:3], SamplingConfig(n=2, temperature=1.0, max_tokens=8, seeds=[5, 6, 7]))
    engine.load_weights([], version=3)
    futures = [engine.submit(p, s, seed=seed) for p, seed in zip(PROMPTS[:3], [5, 6, 7])]
    assert engine.step() == 0 and all(f.done() for f in futures)
    for f, w in zip(futures, want):
        assert_same(f.result(), w)
        assert all(c.versions == [3] * len(c.token_ids) for c in f.result().completions)
    assert all(c.versions is None for g in want for c in g.completions)

"""The static-KV-cache engine (``rollouts.static_engine``): exact log-probs, exact sampling, seeds,
stops, finished rows leaving the batch, the compiled layer equal to the eager one, weight sync."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlvr.archs import build_model, micro_config
from rlvr.pretrain import local_tokenizer
from rollouts import SamplingConfig, make_engine, static_engine
from rollouts.sampling import sample_inverse_cdf
from rollouts.static_engine import _buckets, _Layer, _layers, check_supported

PROMPTS = [f"A conversation between User and Assistant.\nUser: Compute {a}+{b}-{c}.\nAssistant: <think>"
           for a, b, c in [(3, 4, 2), (12, 5, 7), (20, 9, 1)]] + ["Hi"]


@pytest.fixture(scope="module")
def gqa_models(tmp_path_factory) -> dict[str, str]:
    """Micro Qwen3 (q/k norms, tied head) and Qwen2 (q/k/v biases) with 2 query heads per KV head."""
    tokenizer = local_tokenizer()
    root = tmp_path_factory.mktemp("static")
    return {arch: build_model(micro_config(arch, len(tokenizer), hidden=128, heads=2, kv_heads=1), tokenizer,
                              root / arch) for arch in ("qwen3", "qwen2")}


def fresh_logprobs(model, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt_ids) - 1 :]


def worst_gap(model, groups) -> float:
    return max((fresh_logprobs(model, g.prompt_ids, c.token_ids) - torch.tensor(c.logprobs)).abs().max().item()
               for g in groups for c in g.completions)


@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_compiled_engine_matches_transformers(gqa_models, arch):
    """Greedy tokens equal the HF engine's; sampled log-probs equal a fresh forward pass; the
    compiled decode layer gives what the eager one gives (GQA, q/k norms, biases)."""
    from transformers import AutoModelForCausalLM

    model_dir = gqa_models[arch]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    compiled = make_engine("static", model_dir)
    eager = make_engine("static", model_dir, compile=False)
    hf = make_engine("hf", model_dir)
    greedy = SamplingConfig(n=2, temperature=0.0, max_tokens=20)
    tokens = [[c.token_ids for c in g.completions] for g in compiled.generate(PROMPTS, greedy)]
    assert tokens == [[c.token_ids for c in g.completions] for g in hf.generate(PROMPTS, greedy)]
    sampled = SamplingConfig(n=3, temperature=1.0, max_tokens=24, seed=5)
    a, b = compiled.generate(PROMPTS, sampled), eager.generate(PROMPTS, sampled)
    assert [[c.token_ids for c in g.completions] for g in a] == [[c.token_ids for c in g.completions] for g in b]
    assert worst_gap(model, a) <= 1e-4
    assert worst_gap(model, b) <= 1e-4


def test_sampling_is_exact():
    """Inverting the CDF at a uniform draws from softmax(logits / T) and from the top-p nucleus."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).repeat(40_000, 1)
    u = torch.rand(40_000)
    for temperature, top_p in [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)]:
        s = SamplingConfig(temperature=temperature, top_p=top_p)
        picks, logprobs = sample_inverse_cdf(logits, u, s)
        assert torch.allclose(logprobs, logits.log_softmax(-1).gather(-1, picks[:, None]).squeeze(-1), atol=1e-6)
        freq = torch.bincount(picks, minlength=5).double() / len(picks)
        probs = (logits[0] / temperature).softmax(-1).double()
        if top_p < 1:
            order = probs.argsort(descending=True)
            keep = torch.zeros(5, dtype=torch.bool)
            keep[order] = probs[order].cumsum(0) - probs[order] < top_p
            probs = torch.where(keep, probs, 0) / probs[keep].sum()
        assert (freq - probs).abs().max() < 0.01, (temperature, top_p, freq, probs)
        assert freq[probs == 0].sum() == 0  # outside the nucleus: never
    greedy, _ = sample_inverse_cdf(logits[:3], u[:3], SamplingConfig(temperature=0.0))
    assert greedy.tolist() == [0, 0, 0]


def test_seeds_batches_and_chunks_do_not_change_samples(micro_model):
    engine = make_engine("static", micro_model, compile=False, max_batch=8)  # 2 groups of 4 per batch
    together = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=16, seeds=[1, 2, 3, 4]))
    alone = [engine.generate([p], SamplingConfig(n=4, temperature=1.0, max_tokens=16, seeds=[s]))[0]
             for p, s in zip(PROMPTS, [1, 2, 3, 4])]
    assert [[c.token_ids for c in g.completions] for g in together] == [[c.token_ids for c in g.completions] for g in alone]
    again = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=16, seeds=[1, 2, 3, 5]))
    assert [c.token_ids for c in again[3].completions] != [c.token_ids for c in together[3].completions]
    one = engine.generate(PROMPTS[:1], SamplingConfig(n=1, temperature=1.0, max_tokens=16, seed=9))
    assert len(one) == 1 and len(one[0].completions) == 1 and len(one[0].completions[0].token_ids) >= 1


def test_stops_and_rows_leaving_the_batch_keep_log_probs_exact(micro_model):
    """Rows that end early (stop strings) leave the batch; the rows that go on still report the
    model's own log-probs, and each group is announced once, complete."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32).eval()
    engine = make_engine("static", micro_model, compile=False)
    seen = []
    groups = engine.generate(PROMPTS, SamplingConfig(n=6, temperature=1.0, max_tokens=40, seed=2, stop=["e"]),
                             on_group=lambda i, g: seen.append((i, len(g.completions))))
    assert sorted(seen) == [(i, 6) for i in range(len(PROMPTS))]
    completions = [c for g in groups for c in g.completions]
    assert len(set(len(c.token_ids) for c in completions)) > 3
    # "stop": the stop string or the end-of-text token (which of the two the micro base samples more
    # depends on the CPU that pretrained it)
    by_string = [c for c in completions if c.finish_reason == "stop" and c.token_ids[-1] != engine.eos_id]
    assert by_string
    for c in completions:
        assert "e" not in c.text
        if c.finish_reason == "length":
            assert len(c.token_ids) == 40
    for c in by_string:
        assert "e" in engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert worst_gap(model, groups) <= 1e-4


def test_load_weights_equals_a_fresh_engine(micro_model, tmp_path):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    engine = make_engine("static", micro_model, compile=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    engine.load_weights((k, v.clone()) for k, v in policy.named_parameters())
    policy.save_pretrained(tmp_path)
    engine.tokenizer.save_pretrained(tmp_path)
    fresh = make_engine("static", str(tmp_path), compile=False)
    s = SamplingConfig(n=2, temperature=1.0, max_tokens=16, seed=4)
    assert ([c.token_ids for g in engine.generate(PROMPTS, s) for c in g.completions]
            == [c.token_ids for g in fresh.generate(PROMPTS, s) for c in g.completions])
    with pytest.raises(KeyError, match="nope"):
        engine.load_weights([("nope", torch.zeros(1))])
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])


@pytest.mark.parametrize("field, config", [
    ("gpt2", SimpleNamespace(model_type="gpt2")),
    ("yarn", SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "yarn"})),
    ("gelu", SimpleNamespace(model_type="llama", hidden_act="gelu")),
    ("sliding", SimpleNamespace(model_type="qwen2", use_sliding_window=True)),
])
def test_unsupported_models_are_refused_by_name(field, config):
    with pytest.raises(ValueError, match=field):
        check_supported(config)


def test_kv_budget_splits_batches_without_changing_samples(micro_model):
    """A KV-cache budget too small for every group at once decodes them in more batches; per-prompt
    seeds keep the samples what they were."""
    roomy = make_engine("static", micro_model, compile=False)
    tight = make_engine("static", micro_model, compile=False, kv_cache_gib=1e-9)  # one group per batch
    s = SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=6)
    assert tight._group_bytes(30, s) > tight.kv_cache_bytes
    assert ([c.token_ids for g in roomy.generate(PROMPTS, s) for c in g.completions]
            == [c.token_ids for g in tight.generate(PROMPTS, s) for c in g.completions])


@pytest.fixture(params=[1, 2])
def threads(request):
    """One thread and two (a row's numbers must not depend on how the threads split the batch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def samples(groups) -> list[list[tuple[list[int], torch.Tensor, str]]]:
    return [[(c.token_ids, torch.tensor(c.logprobs), c.finish_reason) for c in g.completions] for g in groups]


def assert_identical(a, b) -> None:
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        for (ids_a, lp_a, why_a), (ids_b, lp_b, why_b) in zip(ga, gb, strict=True):
            assert ids_a == ids_b and why_a == why_b
            assert torch.equal(lp_a, lp_b)


LONG_TAIL = PROMPTS * 3  # 12 prompts of four lengths


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_refilled_rows_sample_what_one_batch_samples(micro_model, threads, compile, monkeypatch):
    """Continuous batching: with room for two groups at a time, finished groups' slots are refilled
    from the queue (rows entering at many different steps, beside rows at other steps); every row's
    token ids and log-probs are bit-for-bit those of one batch holding every group, of shrink-only
    batching, of the prompts in another order, and of steps cut into as many buckets as they have
    chunks of rows."""
    seeds = list(range(100, 100 + len(LONG_TAIL)))
    limits = [4, 40, 9, 23, 31, 6, 40, 17, 12, 35, 3, 28]  # lengths spread as a long tail would be
    s = SamplingConfig(n=3, temperature=1.0, max_tokens=40, seeds=seeds, max_tokens_each=limits, stop=["}"])
    one_batch = make_engine("static", micro_model, compile=compile)
    refilled = make_engine("static", micro_model, compile=compile, max_batch=6)
    shrink_only = make_engine("static", micro_model, compile=compile, max_batch=6, refill=False)
    seen = []
    want = samples(one_batch.generate(LONG_TAIL, s))
    assert_identical(samples(refilled.generate(LONG_TAIL, s, on_group=lambda i, g: seen.append(i))), want)
    assert sorted(seen) == list(range(len(LONG_TAIL))) and seen != sorted(seen)  # announced as they finish
    assert_identical(samples(shrink_only.generate(LONG_TAIL, s)), want)
    order = [7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6]
    shuffled = SamplingConfig(n=3, temperature=1.0, max_tokens=40, seeds=[seeds[i] for i in order],
                              max_tokens_each=[limits[i] for i in order], stop=["}"])
    got = samples(refilled.generate([LONG_TAIL[i] for i in order], shuffled))
    assert_identical([got[order.index(i)] for i in range(len(order))], want)
    monkeypatch.setattr(static_engine, "CALL_KEYS", 0)  # every 16 rows a bucket of their own
    assert_identical(samples(make_engine("static", micro_model, compile=compile).generate(LONG_TAIL, s)), want)
    lengths = [len(ids) for g in want for ids, _, _ in g]
    assert max(lengths) >= 30 and min(lengths) <= 4 and {why for g in want for _, _, why in g} == {"stop", "length"}
    assert all(len(ids) <= limit for g, limit in zip(want, limits) for ids, _, _ in g)


def test_a_step_is_cut_into_buckets_only_where_the_keys_saved_pay_for_a_call():
    """``_buckets`` by hand: chunks of 16 rows with their (own, prompt) key widths, a call worth 6000
    row-keys. Equal widths: one bucket. Two long chunks then six short ones: one bucket reads
    16 * 8 * 272 = 34,816 keys (+ 6000), two read 16 * 2 * 272 + 16 * 6 * 32 = 11,776 (+ 12,000). Widths a
    little apart: one bucket (16 * 2 * 80 + 6000 = 8560 against 16 * (80 + 64) + 12,000)."""
    assert _buckets([(64, 16)] * 4, 16, 6000) == [4]
    assert _buckets([(256, 16)] * 2 + [(16, 16)] * 6, 16, 6000) == [2, 6]
    assert _buckets([(64, 16), (48, 16)], 16, 6000) == [2]
    assert _buckets([(256, 16), (128, 16), (16, 16)], 16, 0) == [1, 1, 1]  # calls free: every chunk its own
    assert _buckets([], 16, 6000) == []


def test_buffers_are_kept_between_calls_and_freed_on_close(micro_model):
    engine = make_engine("static", micro_model, compile=False, max_batch=6)
    s = SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=1)
    engine.generate(PROMPTS, s)
    first = {name: buf.data_ptr() for name, buf in engine._buffers.flat.items()}
    assert {"gen_k", "gen_v", "prompt_k", "prompt_v", "uniforms", "logits"} <= set(first)
    engine.generate(PROMPTS[::-1], SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=2))  # smaller: reused
    assert {name: buf.data_ptr() for name, buf in engine._buffers.flat.items()} == first
    engine.close()
    assert engine._buffers.nbytes() == 0


def test_per_prompt_max_tokens_is_checked():
    with pytest.raises(ValueError, match="max_tokens_each"):
        SamplingConfig(max_tokens=8, max_tokens_each=[4, 9])


HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER = 64, 4, 2, 16, 96  # the layer tests' shapes (GQA: 2 queries a KV head)


def random_layer() -> _Layer:
    """A decoder layer of random weights in the engine's layout, scaled to keep activations near 1."""
    return _Layer(norm1=torch.rand(HIDDEN) + 0.5, qkv=torch.randn((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN) / 8,
                  qkv_bias=None, q_norm=None, k_norm=None, o=torch.randn(HIDDEN, HEADS * HEAD_DIM) / 8,
                  norm2=torch.rand(HIDDEN) + 0.5, gate_up=torch.randn(2 * INTER, HIDDEN) / 8,
                  down=torch.randn(HIDDEN, INTER) / 10)


@pytest.mark.parametrize("compile", [False, True])
def test_a_rows_attention_has_the_same_bits_in_any_batch_and_width(threads, compile):
    """The decode layer on its own, on random weights and caches: the same 16 rows give the same bits
    alone and inside a batch of 48 (at other places in the batch, their caches in other row slots, beside
    rows at other positions), and whether their own keys and their prompts are padded to 48, 64 or 80
    keys and 32, 48 or 64 (the padding masked). This is what lets continuous batching, a step's buckets
    and any batch composition sample the same tokens, on any CPU."""
    torch.manual_seed(0)
    w = random_layer()
    fn, _ = _layers(HEADS, KV_HEADS, 1e-6, compile)  # as the engine builds and compiles it
    B, T, W, G = 48, 80, 64, 6
    mine = torch.arange(16, 32)  # the rows compared, in the middle of the big batch
    for draw in range(4):  # whether a sum order shows depends on the numbers: several draws of them
        x = torch.randn(B, HIDDEN)
        pos = torch.randint(0, 60, (B,))
        plen = torch.randint(1, 30, (B,))
        group = torch.randint(0, G, (B,))
        cache = torch.randn(2, B, KV_HEADS, T + 16, HEAD_DIM)
        prompt = torch.randn(2, G, KV_HEADS, W + 16, HEAD_DIM)  # a spare block, as in the engine: slices stay strided
        angle = torch.rand(B, 1, HEAD_DIM)
        pos[mine], plen[mine] = torch.randint(30, 44, (16,)), torch.randint(1, 30, (16,))  # fit in 48 and 32 keys

        def run(rows, width, pwidth, place, x=x, cache=cache, prompt=prompt, group=group, pos=pos, plen=plen,
                angle=angle):
            kg, vg = torch.empty_like(cache[0]), torch.empty_like(cache[1])  # row i's cache in slot place[i]
            kg[place], vg[place] = cache[0], cache[1]
            slot = place[rows]
            out = fn(x[rows], w, kg[:, :, :width], vg[:, :, :width], prompt[0, :, :, :pwidth],
                     prompt[1, :, :, :pwidth], slot, group[rows], pos[rows], plen[rows], angle[rows].cos(),
                     angle[rows].sin())
            return out, kg[slot, :, pos[rows]]

        with torch.inference_mode():
            want, key = run(mine, 48, 32, torch.arange(B))
            for rows, width, pwidth, place in [(torch.arange(B), 64, 48, torch.arange(B)),
                                               (torch.arange(B), 80, 64, torch.randperm(B)),
                                               (mine, 64, 64, torch.randperm(B)),
                                               (torch.cat([mine[8:], mine[:8]]), 48, 32, torch.arange(B).flip(0))]:
                got, got_key = run(rows, width, pwidth, place)
                at = [rows.tolist().index(i) for i in mine.tolist()]
                assert torch.equal(got[at], want) and torch.equal(got_key[at], key), (draw, width, pwidth, len(rows))


@pytest.mark.parametrize("compile", [False, True])
def test_a_prompts_prefill_has_the_same_bits_whatever_is_packed_beside_it(threads, compile):
    """Prompts are prefilled together, packed token after token: a prompt's keys, values and outputs are
    the same bits alone (padded to 16 rows) and packed after and before other prompts of other
    lengths, with the prompt cache read at other widths."""
    torch.manual_seed(1)
    w = random_layer()
    _, fn = _layers(HEADS, KV_HEADS, 1e-6, compile)  # as the engine builds and compiles it
    lengths = {0: 45, 1: 5, 2: 60, 3: 13}  # group slot -> prompt length; slot 4 is scratch
    x = {g: torch.randn(n, HIDDEN) for g, n in lengths.items()}
    angle = torch.rand(64, 1, HEAD_DIM)

    def run(order, width):
        xs = torch.cat([x[g] for g in order])
        M = -(-len(xs) // 16) * 16
        group = torch.full((M,), 4)
        group[: len(xs)] = torch.cat([torch.full((lengths[g],), g) for g in order])
        pos = torch.zeros(M, dtype=torch.long)
        pos[: len(xs)] = torch.cat([torch.arange(lengths[g]) for g in order])
        cache = torch.zeros(2, 5, KV_HEADS, 96, HEAD_DIM)
        out = fn(torch.cat([xs, torch.zeros(M - len(xs), HIDDEN)]), w, cache[0, :, :, :width], cache[1, :, :, :width],
                 group, pos, angle[pos].cos(), angle[pos].sin())
        at = order.index(0)
        start = sum(lengths[g] for g in order[:at])
        return out[start : start + lengths[0]], cache[:, 0, :, : lengths[0]]

    with torch.inference_mode():
        want, kv = run([0], 48)
        for order, width in [([1, 0], 48), ([2, 0, 3], 64), ([3, 1, 0, 2], 80)]:
            got, got_kv = run(order, width)
            assert torch.equal(got, want) and torch.equal(got_kv, kv), (order, width)

"""The `hf-generate` baseline (transformers' ``model.generate``) and the bench's engine specs."""

import pytest
import torch

from rollouts import SamplingConfig, make_engine
from rollouts.bench import flops_per_token, format_table, parse_engine_spec, response_lengths, run_bench

PROMPTS = ["User: Compute 3+4-2.\nAssistant: <think>", "User: Compute 12-5.\nAssistant: <think>", "Hello"]


@pytest.fixture(scope="module")
def engine(micro_model):
    return make_engine("hf-generate", micro_model)


def fresh_logprobs(model, prompt_ids, token_ids):
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt_ids) - 1 :]


def test_ignore_eos_gives_exact_lengths_and_fresh_logprobs(engine):
    """Left-padded batched generate: every sample has max_tokens tokens and its log-probs are the
    model's own (before temperature) at each sampled token, as one plain float32 forward gives."""
    groups = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=0.7, max_tokens=20, ignore_eos=True, seed=2))
    assert [g.prompt for g in groups] == PROMPTS
    worst = 0.0
    for g in groups:
        assert g.prompt_ids == engine.tokenizer(g.prompt, add_special_tokens=False)["input_ids"]
        assert len(g.completions) == 3
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) == 20 and c.finish_reason == "length"
            worst = max(worst, (fresh_logprobs(engine.model, g.prompt_ids, c.token_ids) - torch.tensor(c.logprobs)).abs().max().item())
    assert worst <= 1e-4


def first_draw_with(engine, prompts, make, stopped, seeds=range(7, 27)):
    """The first seed's draw (``make(seed)``) that holds a completion with ``stopped(c)``: what the micro
    model samples depends on the CPU that pretrained it, so no one seed is counted on."""
    for seed in seeds:
        groups = engine.generate(prompts, make(seed))
        if any(stopped(c) for g in groups for c in g.completions):
            return make(seed), groups
    raise AssertionError(f"seeds {seeds.start}-{seeds.stop - 1}: no draw had a completion that stopped")


def test_eos_stops_and_seed_reproduces(engine):
    s, a = first_draw_with(engine, PROMPTS, lambda seed: SamplingConfig(n=4, temperature=1.0, max_tokens=40, seed=seed),
                           lambda c: c.finish_reason == "stop")
    b = engine.generate(PROMPTS, s)
    assert [c.token_ids for g in a for c in g.completions] == [c.token_ids for g in b for c in g.completions]
    stopped = [c for g in a for c in g.completions if c.finish_reason == "stop"]
    for c in stopped:  # cut right after EOS: no padding after it
        assert c.token_ids[-1] == engine.eos_id and engine.eos_id not in c.token_ids[:-1]
        assert len(c.token_ids) == len(c.logprobs)
    for c in (c for g in a for c in g.completions if c.finish_reason == "length"):
        assert len(c.token_ids) == 40 and engine.eos_id not in c.token_ids


def test_stop_string_cuts_tokens_and_text(engine):
    _, groups = first_draw_with(engine, PROMPTS[:2], lambda seed: SamplingConfig(n=3, temperature=1.0, max_tokens=40,
                                                                                 stop=["</think>"], seed=seed),
                                lambda c: c.finish_reason == "stop" and c.token_ids[-1] != engine.eos_id,
                                seeds=range(3, 23))  # a draw with a cut at the stop string, not only at EOS
    hits = [c for g in groups for c in g.completions if c.finish_reason == "stop"]
    for c in hits:
        full = engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        before = engine.tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)
        assert "</think>" not in c.text and ("</think>" in full or c.token_ids[-1] == engine.eos_id)
        assert "</think>" not in before  # the last token is the one that completed the stop string (or EOS)


def test_parse_engine_spec():
    assert parse_engine_spec("hf-generate") == ("hf-generate", {})
    assert parse_engine_spec("vllm:enforce_eager=false,max_num_seqs=512,block_size=32,env.X=1") == (
        "vllm", {"enforce_eager": False, "max_num_seqs": 512, "block_size": 32, "env.X": 1})
    with pytest.raises(ValueError, match="unknown engine"):
        parse_engine_spec("trt")
    with pytest.raises(ValueError, match="key=value"):
        parse_engine_spec("vllm:eager")


def test_bench_reports_both_ratios(micro_model):
    res = run_bench(micro_model, ["hf", "hf-generate"], prompts=2, n=2, max_tokens=6, dtype="float32", repeats=1, progress=False)
    assert [r["engine"] for r in res] == ["hf", "hf-generate"]
    for r in res:
        assert r["generated_tokens"] == 2 * 2 * 6 and r["tokens_per_cpu_s"] > 0
    assert res[0]["ratio_vs_hf"] == 1.0 and res[1]["ratio_vs_hf_generate"] == 1.0
    assert res[0]["ratio_vs_hf_generate"] == pytest.approx(res[0]["tokens_per_s"] / res[1]["tokens_per_s"])
    for r in res:  # the roofline column: this run's matmul peak and each engine's share of it
        assert r["peak_gflops"] > 0 and r["flops_per_token"] > 0
        assert r["gflops"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / 1e9)
        assert r["roofline"] == pytest.approx(r["gflops"] / r["peak_gflops"])
    assert "% roofline" in format_table(res) and "GFLOP/s" in format_table(res).splitlines()[0]


def test_longtail_lengths_compare_refill_with_shrink_only(micro_model):
    """``--lengths longtail``: each prompt's length fixed (8 .. max_tokens, mostly short), continuous
    batching beside shrink-only batching, both sampling identical tokens."""
    lengths = response_lengths("longtail", 24, 40)
    assert lengths == response_lengths("longtail", 24, 40) and min(lengths) == 8 and max(lengths) == 40
    assert sorted(lengths)[12] < 24  # the median is short: a long tail
    engines = ["static:compile=false,max_batch=16", "static:compile=false,max_batch=16,refill=false"]
    res = run_bench(micro_model, engines, prompts=24, n=2, max_tokens=40, dtype="float32", repeats=1, progress=False,
                    roofline=False, lengths="longtail")
    for r in res:
        assert r["generated_tokens"] == 2 * sum(lengths) and r["same_samples_as"] == engines[0]
    assert res[1]["ratio_vs_shrink_only"] == 1.0 and res[0]["ratio_vs_shrink_only"] > 0
    assert "x shrink-only" in format_table(res)


def test_flops_per_token_counts_matmul_weights_and_attention(micro_model):
    """2 FLOPs per weight a token multiplies with (the head, not the embedding lookup; no norms)
    plus 4 x layers x attention width x context, counted here from the HF model itself."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model)
    cfg = model.config
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in name)
    assert not cfg.tie_word_embeddings  # the micro base has its own head
    width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    assert flops_per_token(micro_model, context=10.0) == 2 * matmul + 4 * cfg.num_hidden_layers * width * 10.0

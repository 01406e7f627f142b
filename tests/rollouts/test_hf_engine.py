import pytest
import torch

from rollouts import SamplingConfig
from rollouts.hf_engine import HFEngine

PROMPTS = ["User: Compute 3+4-2.\nAssistant: <think>", "User: Compute 12-5.\nAssistant: <think>", "Hello"]


@pytest.fixture(scope="module")
def engine(micro_model):
    return HFEngine(micro_model)


def fresh_logprobs(model, prompt_ids, token_ids):
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    lp = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return lp[len(prompt_ids) - 1 :]


def test_groups_shape_and_finish_reasons(engine):
    groups = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_tokens=12, seed=0))
    assert [g.prompt for g in groups] == PROMPTS
    for g in groups:
        assert len(g.completions) == 4
        assert g.prompt_ids == engine.tokenizer(g.prompt, add_special_tokens=False)["input_ids"]
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            assert c.finish_reason in ("stop", "length")
            if c.finish_reason == "length":
                assert len(c.token_ids) == 12
            else:
                assert c.token_ids[-1] == engine.eos_id


def test_logprobs_match_fresh_forward_pass(engine):
    """Batched, left-padded, KV-cached sampling reports the same log-probs as one plain forward."""
    groups = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=16, seed=1))
    worst = 0.0
    for g in groups:
        for c in g.completions:
            ref = fresh_logprobs(engine.model, g.prompt_ids, c.token_ids)
            worst = max(worst, (ref - torch.tensor(c.logprobs)).abs().max().item())
    assert worst <= 1e-4


def test_seed_reproducible_and_greedy_deterministic(engine):
    s = SamplingConfig(n=2, temperature=1.0, max_tokens=10, seed=123)
    a = [c.token_ids for g in engine.generate(PROMPTS, s) for c in g.completions]
    b = [c.token_ids for g in engine.generate(PROMPTS, s) for c in g.completions]
    assert a == b
    g1 = engine.generate(PROMPTS, SamplingConfig(n=2, temperature=0.0, max_tokens=10))
    assert all(g.completions[0].token_ids == g.completions[1].token_ids for g in g1)
    # greedy equals the argmax of a fresh forward pass, token by token
    c = g1[0].completions[0]
    ids = g1[0].prompt_ids + c.token_ids
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    argmax = logits[len(g1[0].prompt_ids) - 1 : -1].argmax(-1).tolist()
    assert argmax == c.token_ids


def test_stop_string_and_top_p(engine):
    groups = engine.generate(PROMPTS[:2], SamplingConfig(n=2, temperature=1.0, max_tokens=30, stop=["="], seed=3))
    for g in groups:
        for c in g.completions:
            assert "=" not in c.text
            if c.finish_reason == "stop" and c.token_ids[-1] != engine.eos_id:
                assert "=" in engine.tokenizer.decode(c.token_ids)
    tiny_p = engine.generate(PROMPTS[:1], SamplingConfig(n=3, temperature=1.0, top_p=1e-6, max_tokens=8, seed=4))
    greedy = engine.generate(PROMPTS[:1], SamplingConfig(n=1, temperature=0.0, max_tokens=8))
    assert all(c.token_ids == greedy[0].completions[0].token_ids for c in tiny_p[0].completions)


def test_load_weights_changes_outputs(micro_model):
    eng = HFEngine(micro_model)
    s = SamplingConfig(n=1, temperature=0.0, max_tokens=8)
    before = eng.generate(PROMPTS, s)
    perturbed = {n: p.detach() + 0.5 * torch.randn_like(p) for n, p in eng.model.named_parameters()}
    eng.load_weights(perturbed.items())
    for n, p in eng.model.named_parameters():
        assert torch.equal(p, perturbed[n])
    after = eng.generate(PROMPTS, s)
    assert [g.completions[0].token_ids for g in before] != [g.completions[0].token_ids for g in after]
    with pytest.raises(KeyError, match="nope"):
        eng.load_weights([("nope", torch.zeros(1))])

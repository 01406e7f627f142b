"""Each engine's sampler draws from the model's own distribution: a chi-square goodness-of-fit test of
first-token frequencies against the transformers model's probabilities, at temperature 1 and with top-p.

The model is the session's ``micro_model`` (pretrained by the real pretraining stage). A random-init
model would not do: its next-token distribution is nearly uniform over the whole vocabulary, where a
wrong temperature changes almost nothing, so a negative control could not fail. After ``PROMPT`` (a
question's first operand comes next) the pretrained model spreads its mass over the ten digits with one
favourite (about 57% / 13% / nine tokens above 2% on the fixture we built; ``reference`` asserts a spread
like that on whichever CPU built the fixture): ten bins with expected counts from ~6 to ~1,700,
where a temperature 10% off already moves the statistic by ~40 (the mean of the chi-square under the
model is its degrees of freedom, ~10).

The statistic: tokens with an expected count >= 5 have a bin each, the rest share one (merged into the
smallest bin when its own expectation is under 5); the p-value is the chi-square survival function,
computed here (scipy is not a dependency) through the regularized upper incomplete gamma function.
Each case draws N = 3,000 first tokens (``max_tokens=1``) of one prompt in one seeded call (n = N), and
once more as six copies of the prompt (n = 500 each), which must pool like one prompt's samples: the
prompts of a call must not share random streams. Every draw is seeded (``SEED``), so on a given machine
and fixture each case gives the same samples and the same p-value on every run: the bound p > 1e-4
cannot flake. On another fixture (another CPU pretrained it) the samples change, and a correct sampler
fails there with probability 1e-4.

Negative controls show the test can fail: samples the engine drew at temperature 1.3 are rejected
against the temperature-1 reference, untruncated samples against the nucleus, and nucleus samples
against the untruncated distribution (all p < 1e-4).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from rollouts import SamplingConfig
from rollouts.config import engine_config

PROMPT = "A conversation between User and Assistant.\nUser: Compute "
N = 3000  # first tokens per case: one prompt, n = N (or COPIES prompt copies of n = N // COPIES)
COPIES = 6
SEED = 1234
ALPHA = 1e-4
MIN_EXPECTED = 5.0


# -- the chi-square survival function -------------------------------------------------------------------------
def upper_gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a) (Numerical
    Recipes' ``gammq``): the series of P = 1 - Q below x = a + 1, Lentz's continued fraction of Q above
    (accurate for the tiny tails a rejection gives)."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_front) * h


def chi2_sf(stat: float, df: int) -> float:
    """P(X >= stat) for X ~ chi-square with ``df`` degrees of freedom."""
    return 0.0 if math.isinf(stat) else upper_gamma_q(df / 2, stat / 2)


def test_chi2_sf_matches_tabulated_quantiles():
    """Textbook quantiles, and the exact closed form at df = 2 (sf = exp(-x/2)) deep in the tail."""
    for stat, df, sf in [(3.841459, 1, 0.05), (18.307038, 10, 0.05), (29.588298, 10, 0.001), (35.564, 10, 1e-4),
                         (124.342113, 100, 0.05), (0.351846, 3, 0.95), (9.342, 10, 0.5)]:
        assert chi2_sf(stat, df) == pytest.approx(sf, rel=2e-3)
    for stat in (0.5, 3.0, 40.0, 400.0):
        assert chi2_sf(stat, 2) == pytest.approx(math.exp(-stat / 2), rel=1e-9)
    assert chi2_sf(math.inf, 5) == 0.0


def chi_square(tokens: list[int], probs: torch.Tensor) -> tuple[float, int, float]:
    """Statistic, degrees of freedom and p-value of ``tokens`` against the distribution ``probs`` [V]
    (float64). A token of probability 0 that was sampled makes the statistic infinite (p = 0)."""
    n = len(tokens)
    counts = Counter(tokens)
    expected = probs * n
    own = expected >= MIN_EXPECTED
    bins = [(float(expected[t]), counts[t]) for t in torch.nonzero(own).flatten().tolist()]
    rest_e = float(expected[~own].sum())
    rest_o = n - sum(o for _, o in bins)
    if rest_e >= MIN_EXPECTED:
        bins.append((rest_e, rest_o))
    elif rest_e > 0:  # too small a bin of its own: merged into the smallest one
        i = min(range(len(bins)), key=lambda j: bins[j][0])
        bins[i] = (bins[i][0] + rest_e, bins[i][1] + rest_o)
    elif rest_o:
        return math.inf, len(bins) - 1, 0.0
    stat = sum((o - e) ** 2 / e for e, o in bins)
    df = len(bins) - 1
    return stat, df, chi2_sf(stat, df)


# -- the reference: the transformers model's own probabilities ------------------------------------------------
class Reference:
    """The model's next-token log-probs after ``PROMPT`` (float64, temperature 1), and a top-p whose
    nucleus boundary lies mid-gap: float32 engines and a float64 reference keep the same tokens."""

    def __init__(self, model_dir: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.prompt_ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([self.prompt_ids])).logits[0, -1]
        self.logp = logits.double().log_softmax(-1)
        self.probs = self.logp.exp()
        self.describe = ", ".join(f"{tok.decode([t])!r} {p:.3f}" for p, t in zip(*self.probs.topk(10)))
        # top-p: the fewest tokens holding >= 75% of the mass (at least 3), top_p midway between the mass
        # before the last of them and the mass including it (the definition of rollouts.sampling.nucleus)
        sorted_p, order = self.probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        k = max(3, int((cum < 0.75).sum()) + 1)
        self.top_p = float(cum[k - 2] + cum[k - 1]) / 2
        self.nucleus = set(order[:k].tolist())
        self.nucleus_probs = torch.zeros_like(self.probs)
        self.nucleus_probs[order[:k]] = sorted_p[:k] / cum[k - 1]
        self.margin = float(sorted_p[k - 1]) / 2  # the mass between top_p and either boundary

    def at_temperature(self, temperature: float) -> torch.Tensor:
        return (self.logp / temperature).softmax(-1)


@pytest.fixture(scope="module")
def reference(micro_model) -> Reference:
    ref = Reference(micro_model)
    spread = int((ref.probs > 0.02).sum())
    assert spread >= 5 and ref.probs.max() < 0.8, (
        f"the micro model's next token after {PROMPT!r} is too peaked for a sampler test ({ref.describe}): "
        "pick a prompt where it is spread")
    assert len(ref.nucleus) < spread and ref.margin > 5e-3
    return ref


@pytest.fixture(scope="module", params=["hf", "static", "vllm"])
def engine(request, micro_model):
    """Each engine as a run builds it (``engine_config(kind).build``). vLLM at one thread, as
    tests/test_vllm_engine.py builds it: a process's in-process vLLM engines all run at its first
    engine's thread count (rollouts.vllm_engine._PROCESS_THREADS)."""
    kind = request.param
    if kind == "vllm":
        pytest.importorskip("vllm")
    eng = engine_config(kind).build(micro_model, threads=1 if kind == "vllm" else 0)
    yield eng
    eng.close()


def first_tokens(engine, ref: Reference, temperature: float, top_p: float = 1.0,
                 copies: int = 1) -> tuple[list[int], list[float]]:
    """N seeded first tokens after the prompt (``copies`` copies of it, N // copies samples each, in one
    call), with their reported log-probs."""
    sampling = SamplingConfig(n=N // copies, temperature=temperature, top_p=top_p, max_tokens=1, seed=SEED,
                              detokenize=False)
    groups = engine.generate([ref.prompt_ids] * copies, sampling)
    comps = [c for g in groups for c in g.completions]
    assert len(comps) == N and all(len(c.token_ids) == 1 for c in comps)
    return [c.token_ids[0] for c in comps], [c.logprobs[0] for c in comps]


def check_logprobs(ref: Reference, tokens: list[int], logprobs: list[float]) -> None:
    """Reported log-probs are the model's own (raw logits, before temperature and top-p)."""
    gap = (torch.tensor(logprobs, dtype=torch.float64) - ref.logp[tokens]).abs().max().item()
    assert gap <= 1e-4, f"reported log-probs differ from the model's by {gap:.2e}"


def report(kind: str, case: str, result: tuple[float, int, float], n: int) -> str:
    stat, df, p = result
    line = f"{kind} {case}: chi2 {stat:.2f}, df {df}, p {p:.3g}, N {n}"
    print(line)
    return line


def test_temperature_one_matches_the_models_probabilities(engine, reference):
    kind = type(engine).__name__
    tokens, logprobs = first_tokens(engine, reference, 1.0)
    result = chi_square(tokens, reference.probs)
    line = report(kind, "T=1", result, len(tokens))
    assert result[1] >= 5, line  # enough bins to test a distribution, not a coin
    assert result[2] > ALPHA, f"{line}: the sampler is biased (model: {reference.describe})"
    check_logprobs(reference, tokens, logprobs)
    # negative control: the engine's samples at temperature 1.3 against the temperature-1 reference
    hot, hot_lp = first_tokens(engine, reference, 1.3)
    control = chi_square(hot, reference.probs)
    report(kind, "T=1.3 vs T=1 (control)", control, len(hot))
    assert control[2] < ALPHA, "the test cannot tell temperature 1.3 from 1"
    assert chi_square(hot, reference.at_temperature(1.3))[2] > ALPHA  # while 1.3 is what it sampled
    check_logprobs(reference, hot, hot_lp)


def test_top_p_matches_the_renormalised_nucleus(engine, reference):
    kind = type(engine).__name__
    tokens, logprobs = first_tokens(engine, reference, 1.0, reference.top_p)
    outside = sorted(set(tokens) - reference.nucleus)
    assert not outside, f"top_p={reference.top_p:.4f}: tokens {outside} outside the nucleus {sorted(reference.nucleus)}"
    result = chi_square(tokens, reference.nucleus_probs)
    line = report(kind, f"top_p={reference.top_p:.4f} ({len(reference.nucleus)} tokens)", result, len(tokens))
    assert result[2] > ALPHA, f"{line}: the nucleus is sampled with a bias (model: {reference.describe})"
    check_logprobs(reference, tokens, logprobs)  # the raw model's, not the truncated distribution's
    # negative controls: untruncated samples against the nucleus, nucleus samples against the whole distribution
    full, _ = first_tokens(engine, reference, 1.0)
    assert chi_square(full, reference.nucleus_probs)[2] < ALPHA
    control = chi_square(tokens, reference.probs)
    report(kind, "top-p vs untruncated (control)", control, len(tokens))
    assert control[2] < ALPHA


def test_copies_of_a_prompt_sample_independently(engine, reference):
    """Prompts of one seeded call draw from random streams of their own (each prompt has its own seed): N
    samples pooled from COPIES copies of the prompt follow the model's distribution like N from one. Shared
    streams repeat samples, and repeats inflate the statistic (by about the number of copies that share): vLLM
    did, before its engine hashed each prompt's seed (rollouts.vllm_engine.spread_seed)."""
    kind = type(engine).__name__
    tokens, logprobs = first_tokens(engine, reference, 1.0, copies=COPIES)
    result = chi_square(tokens, reference.probs)
    line = report(kind, f"T=1, {COPIES} copies x {N // COPIES}", result, len(tokens))
    per = N // COPIES
    first, second = tokens[:per], tokens[per : 2 * per]
    shifted = sum(a == b for a, b in zip(first[1:], second[:-1])) / (per - 1)
    assert result[2] > ALPHA, (f"{line}: copies of a prompt do not sample independently (sample k+1 of the first "
                               f"copy equals sample k of the second for {shifted:.0%} of k; "
                               f"by chance {float((reference.probs ** 2).sum()):.0%})")
    check_logprobs(reference, tokens, logprobs)


# -- beyond the first token: the second token's conditional, and the rows of a group ---------------------------
def second_token_joint(model_dir: str, ref: Reference) -> torch.Tensor:
    """p(t1, t2) = p(t1) p(t2 | PROMPT t1) over every pair of tokens [V * V] (float64, temperature 1): one
    batched forward of the prompt followed by each possible first token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    V = ref.probs.shape[0]
    ids = torch.tensor(ref.prompt_ids).repeat(V, 1)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([ids, torch.arange(V)[:, None]], 1)).logits[:, -1]
    return (ref.probs[:, None] * logits.double().softmax(-1)).flatten()


def test_two_tokens_and_the_rows_of_a_group_follow_the_model(engine, reference, micro_model):
    """The first two tokens of N samples of one prompt (one group, n = N) against the model's joint
    p(t1) p(t2 | t1), and adjacent rows of the group against independence (p(a) p(b) for the first tokens of
    rows 2k and 2k + 1). A first-token test cannot see a sampler that reuses a row's random number at the next
    position, draws the second token from the wrong row's logits, or correlates the rows of a group; these
    can. Negative controls: the pairs of a row's first token with itself, and the second tokens shifted by one
    row (paired with another row's first token), are rejected."""
    kind = type(engine).__name__
    sampling = SamplingConfig(n=N, temperature=1.0, max_tokens=2, seed=SEED, ignore_eos=True, detokenize=False)
    comps = engine.generate([reference.prompt_ids], sampling)[0].completions
    assert len(comps) == N and all(len(c.token_ids) == 2 for c in comps)
    V = reference.probs.shape[0]
    joint = second_token_joint(micro_model, reference)
    pairs = [c.token_ids[0] * V + c.token_ids[1] for c in comps]
    result = chi_square(pairs, joint)
    line = report(kind, "first two tokens vs p(t1) p(t2|t1)", result, len(pairs))
    assert result[1] >= 5, line
    assert result[2] > ALPHA, f"{line}: the second token does not follow the model given the first"
    lp2 = torch.tensor([c.logprobs[1] for c in comps], dtype=torch.float64)
    gap = (lp2 - joint.view(V, V)[[c.token_ids[0] for c in comps], [c.token_ids[1] for c in comps]].log()
           + reference.logp[[c.token_ids[0] for c in comps]]).abs().max().item()
    assert gap <= 1e-4, f"second-token log-probs differ from the model's by {gap:.2e}"
    first = [c.token_ids[0] for c in comps]
    independent = (reference.probs[:, None] * reference.probs[None, :]).flatten()
    rows = [first[2 * k] * V + first[2 * k + 1] for k in range(N // 2)]
    result = chi_square(rows, independent)
    line = report(kind, "rows 2k, 2k+1 vs independence", result, len(rows))
    assert result[2] > ALPHA, f"{line}: adjacent rows of a group are not independent"
    same = chi_square([t * V + t for t in first[: N // 2]], independent)
    shifted = chi_square([a * V + c.token_ids[1] for a, c in zip(first[1:], comps[:-1])], joint)
    assert same[2] < ALPHA and shifted[2] < ALPHA, "the joint tests cannot tell dependent pairs from the model's"

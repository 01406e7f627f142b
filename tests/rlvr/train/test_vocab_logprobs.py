"""The chunked log-prob/entropy (rlvr.vocab_logprobs) against the plain log-softmax: the same
values and the same gradient with respect to the logits, for any chunking, in float32 and for
bf16 logits, and inside the learner's forward."""

from __future__ import annotations

import pytest
import torch

from rlvr.train.learner import token_logp_and_entropy
from rlvr.vocab_logprobs import selected_logp_and_entropy


def plain(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logsm = logits.float().log_softmax(-1)
    return logsm.gather(-1, targets[..., None]).squeeze(-1), -(logsm.exp() * logsm).sum(-1)


def case(dtype: torch.dtype, B: int = 3, T: int = 7, V: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    logits[0, 0] = -30.0  # a row with a near-one-hot distribution beside flat ones
    logits[0, 0, 5] = 30.0
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 0] = 4  # a target with log-prob about -60
    g_lp, g_ent = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    return logits, targets, g_lp, g_ent


def values_and_grad(fn, logits, targets, g_lp, g_ent, **kw):
    x = logits.clone().requires_grad_(True)
    lp, ent = fn(x, targets, **kw)
    torch.autograd.backward((lp, ent), (g_lp, g_ent))
    return lp.detach(), ent.detach(), x.grad


@pytest.mark.parametrize("chunk_elements", [1, 50, 120, 1 << 20])  # one row per chunk, ragged last chunk, all rows
def test_chunked_equals_plain_in_values_and_gradient(chunk_elements):
    logits, targets, g_lp, g_ent = case(torch.float32)
    lp, ent, grad = values_and_grad(selected_logp_and_entropy, logits, targets, g_lp, g_ent,
                                    chunk_elements=chunk_elements)
    ref_lp, ref_ent, ref_grad = values_and_grad(plain, logits, targets, g_lp, g_ent)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == targets.shape
    torch.testing.assert_close(lp, ref_lp, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert lp[0, 0] < -50 and ent[0, 0] < 1e-6  # the peaked row stayed finite, not NaN


def test_gradient_of_each_output_alone_matches_plain():
    logits, targets, g_lp, g_ent = case(torch.float32, seed=1)
    for keep in (0, 1):  # only the log-prob, then only the entropy, reaches the loss
        grads = []
        for fn in (selected_logp_and_entropy, plain):
            x = logits.clone().requires_grad_(True)
            out = fn(x, targets)[keep]
            (out * (g_lp if keep == 0 else g_ent)).sum().backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_double_precision_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (2, 3), generator=g)

    def fn(x):  # the function upcasts to float32, so compare against the float64 formula's gradient
        return selected_logp_and_entropy(x, targets, chunk_elements=12)

    lp, ent = fn(x)
    g_lp, g_ent = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    torch.autograd.backward((lp, ent), (g_lp, g_ent))
    ref = x.detach().clone().requires_grad_(True)
    logsm = ref.log_softmax(-1)
    (logsm.gather(-1, targets[..., None]).squeeze(-1) * g_lp - (logsm.exp() * logsm).sum(-1) * g_ent).sum().backward()
    assert x.grad.dtype == torch.float64
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_bf16_logits_upcast_like_the_plain_version():
    logits, targets, g_lp, g_ent = case(torch.bfloat16, seed=3)
    lp, ent, grad = values_and_grad(selected_logp_and_entropy, logits, targets, g_lp, g_ent, chunk_elements=100)
    ref_lp, ref_ent, ref_grad = values_and_grad(plain, logits, targets, g_lp, g_ent)
    assert lp.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp, ref_lp, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-6, atol=1e-5)
    # both round a float32 gradient to bf16 once; they may land on neighbouring bf16 values
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-4)


def test_no_grad_and_autocast():
    logits, targets, _, _ = case(torch.float32, seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp, ent = selected_logp_and_entropy(logits, targets)
    ref_lp, ref_ent = plain(logits, targets)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref_lp, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-6, atol=1e-5)


def test_learner_forward_equals_plain_log_softmax_of_the_model(micro_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 300, (4, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0  # a right-padded row
    lp, ent = token_logp_and_entropy(model, ids, attn)
    (lp.sum() + 0.5 * ent.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_lp, ref_ent = plain(model(input_ids=ids, attention_mask=attn).logits[:, :-1], ids[:, 1:])
    (ref_lp.sum() + 0.5 * ref_ent.sum()).backward()
    torch.testing.assert_close(lp, ref_lp, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-6, atol=1e-5)
    for n, p in model.named_parameters():  # sums in another order: rounding relative to the gradient's scale
        scale = float(p.grad.abs().max())
        assert scale > 0
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5 * scale, msg=n)

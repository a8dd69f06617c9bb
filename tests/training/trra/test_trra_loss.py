"""The chunked TrRa loss against an independent naive computation on full logits."""

from __future__ import annotations

import math

import pytest
import torch

from flexrealign.training.trra.loss import divergence_sum, fused_teacher_weight, teacher_parts, trra_loss

B, T, D, V, NUM_TOKENS = 3, 7, 8, 50, 45


def naive_loss(zs, za, zr, lam, mask, divergence, beta, num_tokens) -> torch.Tensor:
    """Mean divergence from full (B, T, V) logits in float64: padded rows masked to -inf, mixture in prob space."""
    zs, za, zr = zs.double(), za.double(), zr.double()
    zt = lam * za + (1 - lam) * zr  # (B, T, V)
    keep = torch.arange(zs.shape[-1]) < num_tokens
    zs = zs.masked_fill(~keep, float("-inf"))
    zt = zt.masked_fill(~keep, float("-inf"))
    # Zero the -inf entries after the softmax, so that neither the value nor the gradient sees inf - inf.
    log_ps = torch.where(keep, zs.log_softmax(-1), 0.0)
    log_pt = torch.where(keep, zt.log_softmax(-1), 0.0)
    ps, pt = torch.where(keep, log_ps.exp(), 0.0), torch.where(keep, log_pt.exp(), 0.0)

    def kl(p, log_p, log_q):  # sum p (log p - log q) over the real tokens
        return (p * (log_p - log_q)).sum(-1)

    if divergence == "reverse_kl":
        per_token = kl(ps, log_ps, log_pt)
    elif divergence == "forward_kl":
        per_token = kl(pt, log_pt, log_ps)
    else:
        log_m = torch.where(keep, beta * pt + (1 - beta) * ps, 1.0).log()
        per_token = beta * kl(pt, log_pt, log_m) + (1 - beta) * kl(ps, log_ps, log_m)
    return per_token[mask].sum() / mask.sum()  # (B, T) -> ()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(B, T, D, generator=g, requires_grad=True)
    w_s = (torch.randn(V, D, generator=g) * 0.5).requires_grad_(True)
    h_a, h_r = torch.randn(B, T, D + 2, generator=g), torch.randn(B, T, D - 2, generator=g)
    w_a, w_r = torch.randn(V, D + 2, generator=g) * 0.5, torch.randn(V, D - 2, generator=g) * 0.5
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, :2] = False  # a "prompt"
    mask[-1, -3:] = False  # "padding"
    return h_s, w_s, h_a, w_a, h_r, w_r, mask


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
@pytest.mark.parametrize("lam", [-1.0, 0.5, 2.0, 10.0])
def test_chunked_loss_and_grads_match_naive(divergence: str, lam: float) -> None:
    h_s, w_s, h_a, w_a, h_r, w_r, mask = _inputs()
    beta = 0.3
    loss = trra_loss(h_s, w_s, h_a, w_a, h_r, w_r, lam, mask, divergence, beta, NUM_TOKENS, chunk_size=4)
    g_h, g_w = torch.autograd.grad(loss, (h_s, w_s))

    h_s2, w_s2 = h_s.detach().double().requires_grad_(), w_s.detach().double().requires_grad_()
    ref = naive_loss(h_s2 @ w_s2.T, h_a @ w_a.T, h_r @ w_r.T, lam, mask, divergence, beta, NUM_TOKENS)
    r_h, r_w = torch.autograd.grad(ref, (h_s2, w_s2))

    assert ref.item() > 1e-3  # a non-trivial case
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_h.double(), r_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_w.double(), r_w, rtol=1e-4, atol=1e-6)
    assert torch.all(g_w[NUM_TOKENS:] == 0)  # padded rows take no part
    assert torch.all(g_h[~mask] == 0)  # prompt and padding positions get no gradient


def test_chunk_size_does_not_change_the_result() -> None:
    h_s, w_s, h_a, w_a, h_r, w_r, mask = _inputs(1)
    values = [trra_loss(h_s, w_s, h_a, w_a, h_r, w_r, 2.0, mask, chunk_size=c).item() for c in (1, 3, 1000)]
    assert values == pytest.approx([values[0]] * 3, rel=1e-6)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_identical_inputs_give_zero_loss_and_gradient(divergence: str) -> None:
    h_s, w_s, h_a, w_a, h_r, w_r, mask = _inputs(2)
    # The student is the reference; lam = 0 makes the teacher the reference alone.
    h, w = h_s.detach()[..., : D - 2].clone().requires_grad_(), w_r.clone().requires_grad_()
    loss = trra_loss(h, w, None, None, h.detach(), w_r, 0.0, mask, divergence, num_tokens=NUM_TOKENS)
    loss.backward()
    if (
        divergence == "jsd"
    ):  # log m = logaddexp(log p + log b, log p + log(1 - b)) is log p only up to rounding
        assert abs(loss.item()) < 1e-7
        assert h.grad.abs().max() < 1e-7 and w.grad.abs().max() < 1e-7
    else:  # the same logits on both sides: exactly zero
        assert loss.item() == 0.0
        assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0


def test_no_grad_path_gives_the_same_value() -> None:
    h_s, w_s, h_a, w_a, h_r, w_r, mask = _inputs(3)
    with_grad = trra_loss(h_s, w_s, h_a, w_a, h_r, w_r, 1.5, mask)
    with torch.no_grad():
        without = trra_loss(h_s, w_s, h_a, w_a, h_r, w_r, 1.5, mask)
    assert not without.requires_grad
    assert without.item() == with_grad.item()


def test_teacher_parts_and_fused_weight() -> None:
    assert (
        teacher_parts(0) == ("ref",)
        and teacher_parts(1) == ("aligned",)
        and teacher_parts(2) == ("aligned", "ref")
    )
    w_a, w_r = torch.randn(V, 4), torch.randn(V, 3)
    fused = fused_teacher_weight(w_a, w_r, 2.0)
    torch.testing.assert_close(fused, torch.cat([2 * w_a, -w_r], dim=1))
    assert torch.equal(fused_teacher_weight(None, w_r, 0.0), w_r)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_lam_is_rejected(bad: float) -> None:
    h_s, w_s, h_a, w_a, h_r, w_r, mask = _inputs()
    with pytest.raises(ValueError, match="finite"):
        trra_loss(h_s, w_s, h_a, w_a, h_r, w_r, bad, mask)


def test_bad_arguments_are_rejected() -> None:
    h, w = torch.randn(5, D), torch.randn(V, D)
    with pytest.raises(ValueError, match="divergence"):
        divergence_sum(h, w, h, w, divergence="kl")
    with pytest.raises(ValueError, match="jsd_beta"):
        divergence_sum(h, w, h, w, divergence="jsd", jsd_beta=1.0)
    with pytest.raises(ValueError, match="vocabulary rows"):
        divergence_sum(h, w, h, w[:-1])
    with pytest.raises(ValueError, match="num_tokens"):
        divergence_sum(h, w, h, w, num_tokens=V + 1)


def test_a_batch_without_completion_tokens_gives_a_differentiable_zero() -> None:
    h_s, w_s, h_a, w_a, h_r, w_r, mask = _inputs(4)
    loss = trra_loss(h_s, w_s, h_a, w_a, h_r, w_r, 2.0, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(w_s.grad) == 0


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_loss_backward_twice_and_float64_gradcheck(divergence):
    """Issue 11, kind 7. The example: a second backward(retain_graph=True) raised TypeError, so gradcheck
    could not run. Own inputs: the three divergences, chunking, padded rows, gradcheck of trra_loss itself."""
    gen = torch.Generator().manual_seed(3)
    h_s = torch.randn(B * 2, D, dtype=torch.float64, generator=gen, requires_grad=True)
    w_s = torch.randn(V, D, dtype=torch.float64, generator=gen, requires_grad=True)
    h_a, h_r = (torch.randn(B, 2, D, dtype=torch.float64, generator=gen) for _ in range(2))
    w_a, w_r = (torch.randn(V, D, dtype=torch.float64, generator=gen) for _ in range(2))
    kw = dict(divergence=divergence, num_tokens=NUM_TOKENS, chunk_size=4)
    loss = trra_loss(h_s.view(B, 2, D), w_s, h_a, w_a, h_r, w_r, 1.5, **kw)
    loss.backward(retain_graph=True)
    first = h_s.grad.clone(), w_s.grad.clone()
    loss.backward()  # used to raise TypeError: cannot unpack non-iterable NoneType
    assert torch.allclose(h_s.grad, 2 * first[0]) and torch.allclose(w_s.grad, 2 * first[1])
    assert torch.autograd.gradcheck(
        lambda h, w: trra_loss(h.view(B, 2, D), w, h_a, w_a, h_r, w_r, -0.5, **kw), (h_s, w_s)
    )
    teacher_h, teacher_w = torch.cat([h_a, h_r], -1).view(B * 2, -1), torch.cat([w_a, w_r], -1)
    assert torch.autograd.gradcheck(lambda h, w: divergence_sum(h, w, teacher_h, teacher_w, **kw), (h_s, w_s))
    with pytest.raises(RuntimeError, match="not create_graph=True"):
        torch.autograd.grad(
            trra_loss(h_s.view(B, 2, D), w_s, h_a, w_a, h_r, w_r, 0.5), h_s, create_graph=True
        )

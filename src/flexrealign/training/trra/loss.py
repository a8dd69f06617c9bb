"""TrRa's loss (paper Eq. 6), computed in token chunks from final hidden states and output-head weights.

The teacher is the lam-fused distribution pi_hat = softmax(lam * z_aligned + (1 - lam) * z_ref) with z = h @ W^T.
Logits are linear in the weights, so the fused teacher logits of a chunk are a single matmul,

    z_teacher = cat[h_aligned, h_ref] @ cat[lam * W_aligned, (1 - lam) * W_ref]^T        (fp32),

and no (B, T, V) logits tensor of any model is ever built: only (chunk, V) tiles, one at a time.

Divergences, per token over the vocabulary, with p_s the student and p_t the fused teacher:

    reverse_kl  KL(p_s || p_t) = sum p_s (log p_s - log p_t)          the paper's Eq. 6 (default)
    forward_kl  KL(p_t || p_s) = sum p_t (log p_t - log p_s)
    jsd         beta * KL(p_t || m) + (1 - beta) * KL(p_s || m),  m = beta * p_t + (1 - beta) * p_s

`jsd` is the generalised Jensen-Shannon divergence of TRL's GKD trainer (Agarwal et al., 2024): the mixture is
formed in log space for stability, log m = logaddexp(log beta + log p_t, log(1 - beta) + log p_s). beta = 0.5 is
the symmetric JSD; as beta -> 0 it tends to beta * forward KL and as beta -> 1 to (1 - beta) * reverse KL, which
vanish, hence the two KLs as divergences of their own.

The gradient with respect to the student logits is computed analytically in the forward pass, chunk by chunk, and
folded straight into the gradients of the hidden states and of the head weight (as Liger-Kernel's fused losses do).
So the backward holds no logits either and nothing is recomputed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from flexrealign.core.fusion import as_lam_tensor

Divergence = Literal["reverse_kl", "forward_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd")
# Tokens per chunk: the loss holds three (chunk, V) fp32 tiles, ~0.47 GB at V = 151,936 with 256 tokens.
DEFAULT_CHUNK_SIZE = 256
REF, ALIGNED = "ref", "aligned"


def check_lam(lam: float) -> float:
    """Return lam as a float; any finite real is valid (raises ValueError otherwise)."""
    return float(as_lam_tensor(lam, 1)[0])


def teacher_parts(lam: float) -> tuple[str, ...]:
    """The teachers the fused distribution needs, in concatenation order: lam = 0 is the reference alone and
    lam = 1 the aligned model alone, so those runs skip the other model (and match it bit for bit)."""
    lam = check_lam(lam)
    if lam == 0:
        return (REF,)
    if lam == 1:
        return (ALIGNED,)
    return (ALIGNED, REF)


def fused_teacher_weight(
    aligned_weight: torch.Tensor | None, ref_weight: torch.Tensor | None, lam: float
) -> torch.Tensor:
    """cat[lam * W_aligned, (1 - lam) * W_ref] in fp32, shape (V, D_aligned + D_ref); unneeded parts may be None."""
    scale = {ALIGNED: check_lam(lam), REF: 1.0 - check_lam(lam)}
    given = {ALIGNED: aligned_weight, REF: ref_weight}
    parts = []
    for name in teacher_parts(lam):
        if given[name] is None:
            raise ValueError(f"lam={lam} needs the {name} model's head weight")
        w = given[name].to(torch.promote_types(given[name].dtype, torch.float32))  # (V, D) fp32 or fp64
        parts.append(w if scale[name] == 1.0 else w * scale[name])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].contiguous()  # (V, K)


def fused_teacher_hidden(
    aligned_hidden: torch.Tensor | None, ref_hidden: torch.Tensor | None, lam: float
) -> torch.Tensor:
    """cat[h_aligned, h_ref] in fp32 along the last axis, matching `fused_teacher_weight`."""
    given = {ALIGNED: aligned_hidden, REF: ref_hidden}
    parts = []
    for name in teacher_parts(lam):
        if given[name] is None:
            raise ValueError(f"lam={lam} needs the {name} model's hidden states")
        parts.append(given[name].to(torch.promote_types(given[name].dtype, torch.float32)))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # (..., K)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when an input is fp64 (exact checks such as torch.autograd.gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) as a batched matmul, which does not allocate the (n, V) product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)  # (n,)


# Each chunk works in three preallocated (n, V) fp32 buffers a, b, c, reused from chunk to chunk: allocating
# fresh vocabulary-sized tiles per chunk costs as much as the arithmetic on CPUs (page faults on every tile).


def _reverse_kl(log_ps, log_pt, a, need_grad: bool):
    ps = torch.exp(log_ps, out=a)  # (n, V)
    diff = torch.sub(log_ps, log_pt, out=log_pt)  # log p_s - log p_t, over log p_t
    kl = _rowdot(ps, diff)  # (n,)
    if not need_grad:
        return kl, None
    return kl, diff.sub_(kl[:, None]).mul_(ps)  # d/dz_s = p_s (log p_s - log p_t - KL)


def _forward_kl(log_ps, log_pt, a, need_grad: bool):
    pt = torch.exp(log_pt, out=a)  # (n, V)
    kl = _rowdot(pt, log_pt.sub_(log_ps))  # (n,)
    if not need_grad:
        return kl, None
    return kl, log_ps.exp_().sub_(pt)  # d/dz_s = p_s - p_t


def _jsd(log_ps, log_pt, a, beta: float, need_grad: bool):
    # log m = logaddexp(log p_t + log beta, log p_s + log(1 - beta)); one extra tile for this rarer divergence
    log_m = torch.logaddexp(torch.add(log_pt, math.log(beta), out=a), log_ps + math.log1p(-beta))  # (n, V)
    pt = torch.exp(log_pt, out=a)
    kl_t = _rowdot(pt, log_pt.sub_(log_m))  # KL(p_t || m), (n,)
    ps = torch.exp(log_ps, out=a)  # (n, V)
    d_s = log_ps.sub_(log_m)  # log p_s - log m, in place
    kl_s = _rowdot(ps, d_s)  # KL(p_s || m), (n,)
    value = beta * kl_t + (1.0 - beta) * kl_s
    if not need_grad:
        return value, None
    # d/dz_s = (1 - beta) p_s (log p_s - log m - KL(p_s || m)); the terms through m cancel.
    return value, d_s.sub_(kl_s[:, None]).mul_(ps).mul_(1.0 - beta)


def _chunk(h_s, w_s, h_t, w_t, work: tuple[torch.Tensor, ...], divergence: str, beta: float, need_grad: bool):
    """Per-token divergence (n,) and its gradient w.r.t. the student logits (n, V) for one chunk, in fp32.

    The gradient is a view of a work buffer: use it before the next chunk."""
    a, b, c = (buf[: h_s.shape[0]] for buf in work)  # (n, V) each
    log_pt = torch.log_softmax(torch.mm(h_t, w_t.T, out=a), dim=-1, out=b)  # teacher logits in a
    log_ps = torch.log_softmax(torch.mm(h_s, w_s.T, out=a), dim=-1, out=c)  # student logits in a
    if divergence == "reverse_kl":
        return _reverse_kl(log_ps, log_pt, a, need_grad)
    if divergence == "forward_kl":
        return _forward_kl(log_ps, log_pt, a, need_grad)
    return _jsd(log_ps, log_pt, a, beta, need_grad)


def _divergence_and_grads(
    h_s, w_s, h_t, w_t, divergence: str, beta: float, chunk_size: int, need_h: bool, need_w: bool
):
    """Sum of the per-token divergence and, where asked, its gradients w.r.t. h_s (N, D) and w_s (V, D)."""
    # Exact fp32 math even inside the Trainer's bf16 autocast (fp64 for fp64 inputs, e.g. gradcheck).
    dtype = compute_dtype(h_s, w_s)
    with torch.autocast(h_s.device.type, enabled=False):
        w32 = w_s.to(dtype)  # (V, D); no copy when already in that dtype
        total = torch.zeros((), dtype=dtype, device=h_s.device)
        grad_h = torch.zeros(h_s.shape, dtype=dtype, device=h_s.device) if need_h else None
        grad_w = torch.zeros(w_s.shape, dtype=dtype, device=w_s.device) if need_w else None
        rows = min(chunk_size, h_s.shape[0])
        work = tuple(torch.empty((rows, w_s.shape[0]), dtype=dtype, device=h_s.device) for _ in range(3))
        for start in range(0, h_s.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            h = h_s[sl].to(dtype)  # (n, D)
            per_token, grad_z = _chunk(
                h, w32, h_t[sl].to(dtype), w_t.to(dtype), work, divergence, beta, need_h or need_w
            )  # (n,), (n, V)
            total += per_token.sum()
            if grad_h is not None:
                torch.mm(grad_z, w32, out=grad_h[sl])  # (n, D)
            if grad_w is not None:
                grad_w.addmm_(grad_z.T, h)  # (V, D)
    return total, grad_h, grad_w


class _ChunkedDivergence(torch.autograd.Function):
    """Sum over tokens of the divergence; gradients to the student hidden states and head weight only.

    The gradients are computed in the forward and saved for backward, so backward can run again with
    `retain_graph=True` (gradcheck does) and autograd frees them after the last backward. Higher-order
    gradients (`create_graph=True` through this loss) are not supported: RuntimeError.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, divergence: str, beta: float, chunk_size: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total, grad_h, grad_w = _divergence_and_grads(
            h_s, w_s, h_t, w_t, divergence, beta, chunk_size, need_h, need_w
        )
        ctx.save_for_backward(grad_h, grad_w)  # intermediates: freed by autograd unless the graph is retained
        ctx.dtypes = (h_s.dtype, w_s.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # backward(create_graph=True): a gradient of this gradient is wanted
            raise RuntimeError(
                "TrRa's loss supports first-order gradients (backward, also repeated with retain_graph=True, "
                "and torch.autograd.gradcheck) but not create_graph=True: its gradient is precomputed"
            )
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        out_h = (grad_h * grad_out).to(h_dtype) if grad_h is not None else None
        out_w = (grad_w * grad_out).to(w_dtype) if grad_w is not None else None
        return out_h, out_w, None, None, None, None, None


def _check_inputs(h_s, w_s, h_t, w_t, divergence: str, jsd_beta: float, num_tokens, chunk_size: int) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not 0.0 < jsd_beta < 1.0:
        raise ValueError(f"jsd_beta must lie strictly between 0 and 1, got {jsd_beta}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if h_s.dim() != 2 or h_t.dim() != 2 or h_s.shape[0] != h_t.shape[0]:
        raise ValueError(
            f"hidden states must be (N, D) with one row per token, got {tuple(h_s.shape)} and {tuple(h_t.shape)}"
        )
    if w_s.shape[1] != h_s.shape[1] or w_t.shape[1] != h_t.shape[1]:
        raise ValueError("each head weight must be (V, D) with D the width of its hidden states")
    if w_s.shape[0] != w_t.shape[0]:
        raise ValueError(
            f"student and teacher heads differ in vocabulary rows ({w_s.shape[0]} vs {w_t.shape[0]})"
        )
    if num_tokens is not None and not 1 <= num_tokens <= w_s.shape[0]:
        raise ValueError(f"num_tokens must be between 1 and the {w_s.shape[0]} head rows, got {num_tokens}")


def divergence_sum(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    divergence: Divergence = "reverse_kl",
    jsd_beta: float = 0.5,
    num_tokens: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Sum over N tokens of the divergence between softmax(h_s @ W_s^T) and softmax(h_t @ W_t^T), in fp32.

    student_hidden (N, D) and student_weight (V, D) get gradients; the teacher inputs (N, K), (V, K) never do.
    `num_tokens`: only the first `num_tokens` vocabulary rows take part in either softmax (rows past the tokenizer,
    e.g. Qwen's padding, are excluded; the same as masking their logits to -inf). None uses every row.
    """
    _check_inputs(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        divergence,
        jsd_beta,
        num_tokens,
        chunk_size,
    )
    w_s = student_weight[: num_tokens or None]  # (V', D): padded rows get exactly zero gradient
    dtype = compute_dtype(student_hidden, student_weight)
    h_t = teacher_hidden.detach().to(dtype)  # (N, K)
    w_t = teacher_weight[: num_tokens or None].detach().to(dtype)  # (V', K)
    args = (divergence, float(jsd_beta), int(chunk_size))
    if torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad):
        return _ChunkedDivergence.apply(student_hidden, w_s, h_t, w_t, *args)
    # No graph wanted (evaluation, metrics): skip the gradient work altogether.
    return _divergence_and_grads(student_hidden, w_s, h_t, w_t, *args, need_h=False, need_w=False)[0]


def trra_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    aligned_hidden: torch.Tensor | None,
    aligned_weight: torch.Tensor | None,
    ref_hidden: torch.Tensor | None,
    ref_weight: torch.Tensor | None,
    lam: float,
    mask: torch.Tensor | None = None,
    divergence: Divergence = "reverse_kl",
    jsd_beta: float = 0.5,
    num_tokens: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Mean per-token divergence between the student and the lam-fused teacher over the positions in `mask`.

    Hidden states are final (post-norm) hidden states of shape (B, T, D_model); `mask` (B, T) marks the positions
    whose next token is a completion token (prompt and padding False). A teacher that lam does not need
    (the aligned model at lam = 0, the reference at lam = 1) may be None.
    """
    if mask is None:
        mask = torch.ones(student_hidden.shape[:-1], dtype=torch.bool, device=student_hidden.device)  # (B, T)
    mask = mask.bool()
    if mask.shape != student_hidden.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(student_hidden.shape[:-1])}, got {tuple(mask.shape)}")
    teacher_weight = fused_teacher_weight(aligned_weight, ref_weight, lam)  # (V, K)
    teacher_hidden = fused_teacher_hidden(
        aligned_hidden[mask] if aligned_hidden is not None else None,
        ref_hidden[mask] if ref_hidden is not None else None,
        lam,
    )  # (N, K)
    total = divergence_sum(
        student_hidden[mask],
        student_weight,
        teacher_hidden,
        teacher_weight,
        divergence,
        jsd_beta,
        num_tokens,
        chunk_size,
    )
    return total / mask.sum().clamp(min=1)


def liger_divergence_sum(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    divergence: Divergence = "reverse_kl",
    jsd_beta: float = 0.5,
    num_tokens: int | None = None,
) -> torch.Tensor:
    """`divergence_sum` through Liger-Kernel's fused linear JSD (CUDA only, optional dependency).

    Liger's generalised JSD uses the same convention (beta = 0 forward KL, beta = 1 reverse KL) and returns the
    mean over rows, hence the multiplication by N. It computes in the inputs' dtype, so it is fast but not the
    exact fp32 path; `divergence_sum` stays the default.
    """
    from liger_kernel.transformers import LigerFusedLinearJSD  # optional: checked by the trainer

    beta = {"reverse_kl": 1.0, "forward_kl": 0.0}.get(divergence, jsd_beta)
    rows = slice(None, num_tokens)
    loss_fn = LigerFusedLinearJSD(jsd_beta=beta)
    mean = loss_fn(
        student_hidden,
        student_weight[rows],
        teacher_hidden.detach().to(student_hidden.dtype),
        teacher_weight[rows].detach().to(student_weight.dtype),
        None,
    )
    return mean * student_hidden.shape[0]

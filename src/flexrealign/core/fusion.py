"""Logit fusion (the paper's Eq. 5): pi_hat = softmax(lam * h_aligned + (1 - lam) * h_ref), per token, in fp32.

A token impossible under either model (logit -inf) stays impossible at every lam; see `fuse_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

LamLike = float | int | Sequence[float] | torch.Tensor

REF, ALIGNED = "ref", "aligned"
NEG_INF = float("-inf")
FP32_MAX = torch.finfo(torch.float32).max


def as_lam_tensor(lam: LamLike, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Validate `lam` and return it as an fp32 tensor of shape (B,).

    A scalar applies to every row; a sequence or tensor gives one lam per row. Any finite real is valid:
    lam > 1 extrapolates past the aligned model and lam < 0 moves away from it.
    """
    if isinstance(lam, bool):
        raise ValueError(f"lam must be a finite real number, got the bool {lam!r}")
    if isinstance(lam, (int, float)):
        if not math.isfinite(lam):
            raise ValueError(f"lam must be a finite real number, got {lam!r}")
        return torch.full((batch_size,), float(lam), dtype=torch.float32, device=device)
    t = torch.as_tensor(lam, dtype=torch.float32, device=device).reshape(-1)  # (B,)
    if t.numel() == 1:
        t = t.expand(batch_size).clone()
    if t.shape != (batch_size,):
        raise ValueError(
            f"lam must be a scalar or have one value per row ({batch_size}), got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        bad = [float(x) for x in t[~torch.isfinite(t)].tolist()]
        raise ValueError(f"lam must be finite for every row, got {bad}")
    return t


def fuse_logits(ref_logits: torch.Tensor, aligned_logits: torch.Tensor, lam: LamLike) -> torch.Tensor:
    """Fused logits lam * aligned + (1 - lam) * ref: the paper's Eq. 5 before the softmax, in fp32.

    pi_hat(. | x, y_<t) = softmax(lam * h_aligned + (1 - lam) * h_ref), per token; apply `torch.softmax` (or
    sample) on the result to get pi_hat.

    Args:
        ref_logits: logits of the reference model, shape (B, T, V), (B, V) or (V,), any float dtype.
        aligned_logits: logits of the aligned model, the same shape as `ref_logits`.
        lam: the alignment strength, any finite real (0: reference, 1: aligned, > 1 extrapolates, < 0 moves
            away from the aligned model), or one value per row of the leading (batch) axis, shape (B,).

    Returns:
        fp32 fused logits of the same shape as the inputs, e.g. (B, T, V).

    Raises:
        ValueError: the two shapes differ (the models do not share a vocabulary), the logits have no axis, or
            `lam` is non-finite, a bool, or has neither one value nor B values.

    Non-finite logits follow one rule, at every lam:
    * a token that is impossible under either model (logit -inf, as `mask_untokenized`, bad-words lists and
      grammars write, or NaN) stays impossible: its fused logit is -inf. Plain arithmetic would give NaN
      (-inf - -inf) or, at lam < 0 or lam > 1, +inf, which argmax and the softmax would then pick;
    * every other token gets a finite logit: +inf inputs and overflow at extreme lam are clamped to the
      largest finite fp32 value (with its sign), so the result never holds NaN or +inf.
    Rows with lam == 0 return the reference logits and rows with lam == 1 the aligned logits bit for bit
    wherever both are finite, so those settings reproduce the underlying models exactly.

    Example:
        >>> import torch
        >>> ref, aligned = torch.zeros(2, 3, 5), torch.ones(2, 3, 5)  # (B, T, V)
        >>> fuse_logits(ref, aligned, 0.25)[0, 0]
        tensor([0.2500, 0.2500, 0.2500, 0.2500, 0.2500])
        >>> fuse_logits(ref, aligned, [0.0, 2.0])[:, 0, 0]  # one lam per row
        tensor([0., 2.])
    """
    if ref_logits.shape != aligned_logits.shape:
        raise ValueError(
            f"ref and aligned logits must have the same shape, got {tuple(ref_logits.shape)} "
            f"and {tuple(aligned_logits.shape)} (do the two models share a vocabulary?)"
        )
    if ref_logits.dim() < 1:
        raise ValueError("logits must have at least one (vocabulary) axis")
    batch = ref_logits.shape[0] if ref_logits.dim() > 1 else 1
    return fuse_checked(ref_logits, aligned_logits, as_lam_tensor(lam, batch, ref_logits.device))


def fuse_checked(ref_logits: torch.Tensor, aligned_logits: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """`fuse_logits` for a lam (B,) validated when its request entered (`as_lam_tensor`) and logits of equal
    shape: the same arithmetic, without the checks, whose reads of lam would cost a host sync every step."""
    lam_b = lam.view(-1, *([1] * (ref_logits.dim() - 1))) if ref_logits.dim() > 1 else lam  # (B, 1, ..., 1)
    ref32, aligned32 = _finite_or_neginf(ref_logits), _finite_or_neginf(aligned_logits)
    possible = (ref32 > NEG_INF) & (aligned32 > NEG_INF)  # (B, ..., V)
    # ref + lam * (aligned - ref): with finite inputs this overflows to +-inf at worst, never to NaN
    fused = torch.addcmul(ref32, lam_b, aligned32 - ref32)
    fused = torch.where(lam_b == 0, ref32, fused)
    fused = torch.where(lam_b == 1, aligned32, fused)
    return torch.where(possible, fused.clamp(-FP32_MAX, FP32_MAX), NEG_INF)


def _finite_or_neginf(logits: torch.Tensor) -> torch.Tensor:
    """fp32 logits with NaN -> -inf (impossible) and +inf -> the largest finite value."""
    return logits.float().nan_to_num(nan=NEG_INF, posinf=FP32_MAX, neginf=NEG_INF)


def needed_paths(lam: torch.Tensor) -> tuple[str, ...]:
    """Which forward paths a batch needs: rows at lam == 0 need only ref, rows at lam == 1 only aligned."""
    paths = []
    if bool((lam != 1).any()):
        paths.append(REF)
    if bool((lam != 0).any()):
        paths.append(ALIGNED)
    return tuple(paths)


def fuse_paths(logits: dict[str, torch.Tensor], lam: torch.Tensor, *, checked: bool = False) -> torch.Tensor:
    """Fuse whichever paths were computed; a single path is only valid when every row's lam selects it.

    checked: lam (B,) was validated when its request entered and the paths chosen from it (`needed_paths`), as
    the decode loop does; the checks, and their host syncs, are skipped.
    """
    if REF in logits and ALIGNED in logits:
        return (
            fuse_checked(logits[REF], logits[ALIGNED], lam)
            if checked
            else fuse_logits(logits[REF], logits[ALIGNED], lam)
        )
    (path,) = logits.keys()
    want = 0.0 if path == REF else 1.0
    if not checked and bool((lam != want).any()):
        raise ValueError(
            f"only the {path} path was computed, which serves lam == {want} alone; got lam={lam.tolist()}"
        )
    return _finite_or_neginf(logits[path])  # the same non-finite rule as fuse_logits


def mask_untokenized(
    logits: torch.Tensor, num_tokens: int | None, suppressed: torch.Tensor | None = None
) -> torch.Tensor:
    """Set logits of vocabulary rows past the tokenizer, and of the `suppressed` ids, to -inf, in place, so
    they are never sampled.

    Qwen-family models pad the embedding matrix (e.g. 151,936 rows for ~151,665 tokens); those rows decode
    to nothing and must not be produced. `suppressed` (K,) lists rows inside the tokenizer that have no real
    token either (`prompts.suppressed_ids`).
    """
    if num_tokens is not None and logits.shape[-1] > num_tokens:
        logits[..., num_tokens:] = float("-inf")
    if suppressed is not None:
        logits[..., suppressed] = float("-inf")
    return logits

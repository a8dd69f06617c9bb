"""Fitting the `auto` policy (`flexrealign.decoding.adaptive.AutoPolicy`) from a calibration run.

The policy decodes a request at the short-thinking lam when a logistic probe on the reference path's final
hidden state at the last prompt position says that lam will answer it correctly, and at the careful lam
otherwise. Here the probe is fitted to the measured per-problem Pass@1 at the short lam (a soft label), and
the threshold is chosen on out-of-fold predictions: the one that spends the fewest tokens while keeping
Pass@1 within `tolerance` points of the careful lam's, so that a probe that overfits the calibration problems
does not get to choose its own threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flexrealign.core.fused import FusedCausalLM
from flexrealign.core.fusion import REF
from flexrealign.decoding.adaptive import AutoPolicy
from flexrealign.decoding.prompts import Prompt, encode_prompts, left_pad, pad_token_id

AUTO_TOLERANCE = 0.0  # Pass@1 points below the careful lam that the policy may lose on the calibration set
FOLDS = 5
L2 = 1.0  # ridge strength on the standardized hidden state (the calibration has few problems, D is large)


@dataclass(frozen=True)
class ProblemOutcome:
    """One calibration problem at the two lams: Pass@1 (0..1) and mean tokens."""

    pass_easy: float
    pass_hard: float
    tokens_easy: float
    tokens_hard: float


@torch.inference_mode()
def prompt_states(
    model: FusedCausalLM, tokenizer, prompts: Sequence[Prompt], *, batch_size: int = 16
) -> torch.Tensor:
    """The reference path's final hidden state at each prompt's last position, (N, D) fp32: what the policy
    reads at a request's first step (left-padded batches, positions skipping the padding, as `generate`).

    Raises:
        ValueError: a model that does not expose its hidden state (`FusedCausalLM.probes_hidden`).
    """
    if not model.probes_hidden:
        raise ValueError(f"lam auto reads the reference path's hidden state, which {type(model).__name__} "
                         "does not expose: it is fitted for InRa models")  # fmt: skip
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = encode_prompts(tokenizer, list(prompts[i : i + batch_size]))
        x, mask = left_pad(ids, pad_token_id(tokenizer), model.device)  # (B, T)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        hidden: dict[str, torch.Tensor] = {}
        model._path_logits(x, mask, pos, None, (REF,), 1, hidden)
        out.append(hidden[REF].float().cpu())  # (B, D)
    return torch.cat(out)  # (N, D)


def fit_probe(h: torch.Tensor, y: torch.Tensor, l2: float = L2) -> tuple[torch.Tensor, float]:
    """Ridge-regularised logistic regression of soft labels y (N,) in [0, 1] on h (N, D), on standardized
    features; returns (weights (D,), bias) over the raw features."""
    mu, sd = h.mean(0), h.std(0).clamp(min=1e-6)  # (D,)
    z = (h - mu) / sd  # (N, D)
    w = torch.zeros(h.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    z, y = z.double(), y.double()
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w) / len(y)
        value.backward()
        return value

    opt.step(loss)
    w_raw = (w.detach() / sd.double()).float()  # (D,)
    return w_raw, float(b.detach() - (w_raw.double() * mu.double()).sum())


def choose_threshold(p: torch.Tensor, outcomes: Sequence[ProblemOutcome], tolerance: float) -> float:
    """The threshold on predicted probabilities p (N,) that spends the fewest tokens with Pass@1 within
    `tolerance` points of the careful lam's (ties: the higher Pass@1); 1.0 (always careful) when none does."""
    pe, ph, te, th = (torch.tensor([getattr(o, k) for o in outcomes], dtype=torch.float64)
                      for k in ("pass_easy", "pass_hard", "tokens_easy", "tokens_hard"))  # fmt: skip
    floor = 100 * ph.mean().item() - tolerance
    best = (th.mean().item(), -100 * ph.mean().item(), 1.0)  # (tokens, -Pass@1, threshold)
    for t in sorted(set(p.tolist())):
        easy = p >= t
        acc = 100 * torch.where(easy, pe, ph).mean().item()
        tokens = torch.where(easy, te, th).mean().item()
        if acc >= floor and (tokens, -acc) < best[:2]:
            best = (tokens, -acc, t)
    return best[2]


def fit_auto_policy(
    h: torch.Tensor,
    outcomes: Sequence[ProblemOutcome],
    lam_easy: float,
    lam_hard: float,
    *,
    tolerance: float = AUTO_TOLERANCE,
    folds: int = FOLDS,
) -> tuple[AutoPolicy, dict]:
    """Fit the auto policy (see the module docstring).

    Args:
        h: (N, D) the prompts' states (`prompt_states`).
        outcomes: per problem, Pass@1 and tokens at lam_easy and lam_hard.
        lam_easy: the short-thinking lam; lam_hard: the careful lam.
        tolerance: Pass@1 points the policy may lose against lam_hard on the calibration problems.
        folds: out-of-fold splits for the threshold.

    Returns:
        (the policy, its out-of-fold Pass@1 and tokens against lam_hard's, for the calibration file's meta).

    Raises:
        ValueError: fewer problems than folds, or a count mismatch.
    """
    n = len(outcomes)
    if h.shape[0] != n or n < folds:
        raise ValueError(f"fitting the auto policy needs one state per problem and >= {folds} problems; got "
                         f"{h.shape[0]} states for {n} problems")  # fmt: skip
    y = torch.tensor([o.pass_easy for o in outcomes], dtype=torch.float32)
    oof = torch.empty(n, dtype=torch.float64)
    for k in range(folds):
        test = torch.arange(n) % folds == k
        w, b = fit_probe(h[~test], y[~test])
        oof[test] = torch.sigmoid(h[test] @ w + b).double()
    threshold = choose_threshold(oof, outcomes, tolerance)
    w, b = fit_probe(h, y)
    easy = oof >= threshold
    stats = {
        "out_of_fold_easy_share": round(easy.double().mean().item(), 4),
        "out_of_fold_pass_at_1": round(100 * sum((o.pass_easy if e else o.pass_hard) for o, e in
                                                 zip(outcomes, easy.tolist(), strict=True)) / n, 2),
        "out_of_fold_mean_tokens": round(sum((o.tokens_easy if e else o.tokens_hard) for o, e in
                                             zip(outcomes, easy.tolist(), strict=True)) / n, 2),
        "lam_hard_pass_at_1": round(100 * sum(o.pass_hard for o in outcomes) / n, 2),
        "lam_hard_mean_tokens": round(sum(o.tokens_hard for o in outcomes) / n, 2),
    }  # fmt: skip
    return AutoPolicy(tuple(w.tolist()), b, float(threshold), float(lam_easy), float(lam_hard)), stats

"""Adaptive thinking, in pure Python (no torch): the soft landing of a thinking budget and the `auto` lam policy.

Both read the checkpoint's calibration (`flexrealign calibrate`): the landing its measured lam -> mean thinking
tokens curve, the policy the probe it fitted. docs/thinking.md explains both with the measurements.

Soft landing (`thinking_landing: "soft"`, with `thinking_token_budget` B). The hard cut (the closing text and
the end marker forced once only they still fit) breaks answers when it lands mid-thought. A soft landing
uses the dial first, so that the model closes its own thinking in time:
* up front: when the calibrated mean thinking at the request's thinking lam is above SOFT_FILL * B, the
  thinking lam moves toward the curve's shortest-thinking lam, just far enough that it fits (the curve read
  by linear interpolation; the shortest lam when nothing fits);
* while thinking: once STEER_AT * B tokens are spent, the thinking lam becomes the shortest-thinking lam, so
  a long thought is steered to its close before the cut;
* the hard cut stays the last resort: the thinking never exceeds B.

The `auto` policy (`lam: "auto"`, `reasoning_effort: "auto"`): the lam of each request is chosen from the
model's own state when it has read the prompt. A logistic probe on the reference path's final hidden state at
the last prompt position (the state the first token is sampled from, so computing it costs one dot product)
estimates the chance that the short-thinking lam `lam_easy` answers correctly; the request decodes at
`lam_easy` when that chance is at least `threshold`, else at `lam_hard` (the curve's most accurate lam).
`flexrealign calibrate` fits the probe and chooses the threshold out of fold (`fit_auto_policy` in
`flexrealign.decoding.autofit`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

AUTO = "auto"
SOFT, HARD = "soft", "hard"
LANDINGS = (SOFT, HARD)
DEFAULT_LANDING = SOFT  # where the checkpoint has a calibration (docs/thinking.md gives the measurement)
SOFT_FILL = 0.8  # up front: a thinking lam whose calibrated mean thinking fits in this share of the budget
STEER_AT = 0.75  # while thinking: past this share of the budget, the shortest-thinking lam
_GRID = 40  # lams tried between the request's lam and the shortest-thinking one


@dataclass(frozen=True)
class Landing:
    """A soft landing: the calibrated curve it steers by, as ((lam, mean thinking tokens), ...) sorted by lam.

    Raises:
        ValueError: an empty curve, a non-finite value or a repeated lam.
    """

    curve: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        pts = tuple(sorted((float(lam), float(t)) for lam, t in self.curve))
        if not pts or not all(math.isfinite(v) for p in pts for v in p):
            raise ValueError(
                f"a soft landing needs a curve of finite (lam, thinking tokens), got {self.curve}"
            )
        if len({lam for lam, _ in pts}) != len(pts):
            raise ValueError(f"a soft landing's curve repeats a lam: {pts}")
        object.__setattr__(self, "curve", pts)

    @property
    def shortest_lam(self) -> float:
        """The measured lam that thinks least (ties: the one closest to 0, the reference)."""
        return min(self.curve, key=lambda p: (p[1], abs(p[0])))[0]

    def thinking_at(self, lam: float) -> float:
        """The calibrated mean thinking tokens at `lam`: linear between measured lams, flat outside them."""
        lams = [p[0] for p in self.curve]
        i = bisect.bisect_left(lams, lam)
        if i == 0 or i == len(lams):
            return self.curve[min(i, len(lams) - 1)][1]
        (l0, t0), (l1, t1) = self.curve[i - 1], self.curve[i]
        return t0 + (t1 - t0) * (lam - l0) / (l1 - l0)

    def plan(self, lam: float, budget: int) -> tuple[float, float, int]:
        """(the lam to think at, the lam to steer to, the thinking tokens after which it steers) for a
        request that asked to think at `lam` within `budget` tokens."""
        short = self.shortest_lam
        fits = [lam + (short - lam) * k / _GRID for k in range(_GRID + 1)]
        start = next((x for x in fits if self.thinking_at(x) <= SOFT_FILL * budget), short)
        return start, short, math.ceil(STEER_AT * budget)


@dataclass(frozen=True)
class AutoPolicy:
    """The calibrated `auto` policy: decode at `lam_easy` when sigmoid(weights . h + bias) >= threshold, else at
    `lam_hard`; h is the reference path's final hidden state at the last prompt position.

    Args:
        weights: (D,) the probe, over the model's hidden size.
        bias: its intercept.
        threshold: the probability of `lam_easy` answering right above which it is used, in [0, 1].
        lam_easy: the short-thinking lam.
        lam_hard: the careful lam.

    Raises:
        ValueError: a non-finite value, an empty probe, or a threshold outside [0, 1].
    """

    weights: tuple[float, ...]
    bias: float
    threshold: float
    lam_easy: float
    lam_hard: float

    def __post_init__(self) -> None:
        weights = tuple(float(w) for w in self.weights)
        if not weights or not all(math.isfinite(w) for w in weights):
            raise ValueError("the auto policy's weights must be a non-empty list of finite numbers")
        for name in ("bias", "threshold", "lam_easy", "lam_hard"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(
                    f"the auto policy's {name} must be a finite number, got {getattr(self, name)}"
                )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the auto policy's threshold must be within [0, 1], got {self.threshold}")
        object.__setattr__(self, "weights", weights)

    @property
    def logit_threshold(self) -> float:
        """The threshold on the probe's logit (weights . h + bias), where no sigmoid is needed."""
        t = min(max(self.threshold, 1e-12), 1 - 1e-12)
        return math.log(t / (1 - t))

    @property
    def lams(self) -> tuple[float, float]:
        return (self.lam_easy, self.lam_hard)


@dataclass(frozen=True)
class AutoLam:
    """The lam of a request that asked for `auto`: decided by `policy` when the request's prompt is read."""

    policy: AutoPolicy


__all__ = [
    "AUTO",
    "DEFAULT_LANDING",
    "HARD",
    "LANDINGS",
    "SOFT",
    "SOFT_FILL",
    "STEER_AT",
    "AutoLam",
    "AutoPolicy",
    "Landing",
]

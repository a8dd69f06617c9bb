"""The testbed's figure: Pass@1 against mean tokens on all problems and on hard ones, with 95% intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from flexrealign.eval.results import Row, by_family, fmt_lam, pyplot, save_figure
from flexrealign.testbed.paired import Z95, Outcome, Outcomes


def point(outs: Sequence[Outcome]) -> tuple[float, float, float]:
    """(mean tokens, Pass@1 %, half-width of its normal 95% interval in points) of some samples."""
    n = len(outs)
    p = sum(o.correct for o in outs) / n
    return sum(o.tokens for o in outs) / n, 100.0 * p, 100.0 * Z95 * math.sqrt(p * (1 - p) / n)


def _panel(ax, rows: Sequence[Row], samples: Outcomes, min_terms: int, title: str) -> None:
    for family, members in by_family(rows).items():
        pts = [point([o for o in samples[r.name].values() if o.terms >= min_terms]) for r in members]
        xs, ys, err = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=family)
        for r, x, y in zip(members, xs, ys, strict=True):
            text = f"lam={fmt_lam(r.lam)}" if r.lam is not None else r.model
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.set(xlabel="mean completion tokens", ylabel="Pass@1 (%)", title=title)
    ax.grid(alpha=0.3)


def plot_testbed(rows: Sequence[Row], samples: Outcomes, hard_terms: int, path: Path) -> Path:
    """Two panels: every row's Pass@1 against its mean tokens on all problems, and on problems with at least
    `hard_terms` terms (where thinking carefully pays); error bars are 95% intervals.

    Returns:
        `path`, written atomically.
    """
    rows = [r for r in rows if samples.get(r.name)]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.8))
    _panel(left, rows, samples, 0, "All problems")
    _panel(right, rows, samples, hard_terms, f"Hard problems (>= {hard_terms} terms)")
    left.legend(fontsize=7)
    return save_figure(fig, path)

"""A plain-language reading of the testbed's results, computed from the numbers (nothing canned)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from flexrealign.eval.results import Row


def noise(row: Row) -> float:
    """Two standard errors of a Pass@1 (in points) from its sample count: differences below are noise."""
    p = row.pass_at_1 / 100.0
    return 200.0 * math.sqrt(max(p * (1 - p), 0.01) / max(row.samples, 1))


def compare(row: Row, base: Row) -> str:
    """'uses X% fewer tokens (a vs b) at Pass@1 c vs d (change within noise / a loss of / a gain of e)'."""
    cut = 100.0 * (1 - row.mean_tokens / base.mean_tokens) if base.mean_tokens else 0.0
    more = "fewer" if cut >= 0 else "more"
    delta, tol = row.pass_at_1 - base.pass_at_1, max(noise(row), noise(base))
    if abs(delta) <= tol:
        verdict = f"no accuracy change beyond noise (±{tol:.1f})"
    else:
        verdict = f"a {'gain' if delta > 0 else 'loss'} of {abs(delta):.1f} points"
    return (
        f"{abs(cut):.0f}% {more} tokens ({row.mean_tokens:.1f} vs {base.mean_tokens:.1f}) at Pass@1 "
        f"{row.pass_at_1:.1f}% vs {base.pass_at_1:.1f}%: {verdict}"
    )


def free_reductions(rows: Sequence[Row], base: Row, min_cut: float = 10.0) -> list[Row]:
    """Rows that cut tokens by at least `min_cut`% with no accuracy loss beyond noise."""
    return [
        r
        for r in rows
        if r is not base
        and r.mean_tokens <= (1 - min_cut / 100) * base.mean_tokens
        and r.pass_at_1 >= base.pass_at_1 - max(noise(r), noise(base))
    ]


def reading(table1: Sequence[Row], figure4: Sequence[Row], reference: str = "reference") -> list[str]:
    """Short findings: the aligned model, TrRa's lam and iteration, InRa's lam sweep, free token cuts."""
    by_name = {r.name: r for r in [*table1, *figure4]}
    ref = by_name.get(reference)
    if ref is None:
        return ["(no reference row: nothing to compare against)"]
    lines = [f"{r.model} vs the reference: {compare(r, ref)}." for r in table1 if r is not ref]
    lines += _inra_lines(figure4)
    free = free_reductions([*table1, *figure4], ref)
    if free:
        names = ", ".join(f"{r.name} (-{100 * (1 - r.mean_tokens / ref.mean_tokens):.0f}%)" for r in free)
        lines.append(
            f"Token reduction without accuracy loss (>= 10% fewer tokens, Pass@1 within noise): {names}."
        )
    else:
        lines.append("No model cut tokens by >= 10% without an accuracy loss beyond noise.")
    return lines


def _inra_lines(rows: Sequence[Row]) -> list[str]:
    at = {r.lam: r for r in rows if r.lam is not None}
    lines = []
    if 0.0 in at and 1.0 in at:
        lines.append(f"InRa lam=1 vs lam=0: {compare(at[1.0], at[0.0])}.")
    lams = sorted(at)
    tokens = [at[x].mean_tokens for x in lams]
    if len(lams) > 2:
        mono = all(a >= b for a, b in zip(tokens, tokens[1:], strict=False))
        trend = "falls monotonically" if mono else "does not fall monotonically"
        lines.append(f"InRa's mean tokens {trend} as lam rises: " + ", ".join(
            f"lam={x:g}: {t:.1f}" for x, t in zip(lams, tokens, strict=True)) + ".")  # fmt: skip
    for x, y, what in ((-0.5, 0.0, "thinking longer (lam < 0)"), (1.5, 1.0, "extrapolating (lam > 1)")):
        if x in at and y in at:
            lines.append(f"InRa {what}, lam={x:g} vs lam={y:g}: {compare(at[x], at[y])}.")
    return lines

"""The harness's results: one Row per (model, lam), token reduction against a baseline row, and what is written
from the rows: a table (Pass@1, mean completion tokens, token reduction %, cut-off %) as Markdown and CSV, and
Figure 4's plot of accuracy against mean tokens.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flexrealign.core.atomic import atomic_file


@dataclass
class Row:
    """One line of the results table: one model at one lam (lam None for plain models)."""

    model: str
    family: str
    lam: float | None
    problems: int
    samples: int
    pass_at_1: float  # %, averaged over all samples
    mean_tokens: float
    cutoff_pct: float
    token_reduction_pct: float | None = None

    @property
    def name(self) -> str:
        return self.model if self.lam is None else f"{self.model}@{fmt_lam(self.lam)}"


def fmt_lam(lam: float) -> str:
    return f"{lam:g}"


def find_row(rows: Sequence[Row], name: str) -> Row:
    """The row called `name` ("label@lam", or "label" for a plain model or a model evaluated at one lam)."""
    exact = [r for r in rows if r.name == name]
    if not exact:
        exact = [r for r in rows if r.model == name]
    if len(exact) != 1:
        raise ValueError(f"baseline {name!r} names {len(exact)} rows; choose one of {[r.name for r in rows]}")
    return exact[0]


def add_token_reduction(rows: list[Row], baseline: str | None) -> list[Row]:
    """Token reduction % = 100 * (1 - tokens / baseline tokens), as in Table 1's last column."""
    if baseline is None or not rows:
        return rows
    base = find_row(rows, baseline).mean_tokens
    for r in rows:
        r.token_reduction_pct = 100.0 * (1.0 - r.mean_tokens / base) if base > 0 else None
    return rows


COLUMNS = ("model", "lam", "problems", "samples", "pass@1", "mean_tokens", "token_reduction_%", "cutoff_%")


def row_values(r: Row) -> list[str]:
    red = "-" if r.token_reduction_pct is None else f"{r.token_reduction_pct:.2f}"
    lam = "-" if r.lam is None else fmt_lam(r.lam)
    return [r.model, lam, str(r.problems), str(r.samples), f"{r.pass_at_1:.2f}", f"{r.mean_tokens:.1f}", red,
            f"{r.cutoff_pct:.1f}"]  # fmt: skip


def markdown_table(rows: Sequence[Row], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row_values(r)[: len(columns)]) + " |" for r in rows]
    return "\n".join(lines)


def write_results(
    rows: Sequence[Row], out_dir: Path, title: str = "Results", baseline: str | None = None
) -> None:
    """results.md, results.csv and accuracy_vs_tokens.png (each written to a temporary name, then renamed)."""
    with atomic_file(out_dir / "results.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(row_values(r) for r in rows)
    with atomic_file(out_dir / "results.md") as tmp:
        tmp.write_text(f"# {title}\n\n{markdown_table(rows)}\n")
    if rows:
        plot_accuracy_vs_tokens(rows, out_dir / "accuracy_vs_tokens.png", baseline=baseline)


def pyplot():
    """`matplotlib.pyplot` on the Agg backend: flexrealign only writes figure files, it never opens a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out `fig`, write it to `path` as a PNG atomically (dpi 120) and close it; returns `path`."""
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)
    return path


def by_family(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped by family (first-seen order), each group in ascending lam (plain models last), then tokens:
    the order in which a figure joins a family's points."""
    families: dict[str, list[Row]] = {}
    for r in rows:
        families.setdefault(r.family, []).append(r)
    key = lambda r: (r.lam if r.lam is not None else math.inf, r.mean_tokens)  # noqa: E731
    return {family: sorted(members, key=key) for family, members in families.items()}


def plot_accuracy_vs_tokens(
    rows: Sequence[Row], path: Path, title: str = "Accuracy vs mean tokens", baseline: str | None = None
) -> Path:
    """Figure 4's shape: Pass@1 against mean completion tokens, one line per model family, every point labelled;
    the `baseline` row (e.g. the reference) is drawn as a star with dashed guides through it."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for family, members in by_family(rows).items():
        xs, ys = [r.mean_tokens for r in members], [r.pass_at_1 for r in members]
        ax.plot(xs, ys, marker="o", label=family)
        for r, x, y in zip(members, xs, ys, strict=True):
            text = f"lam={fmt_lam(r.lam)}" if r.lam is not None else r.model
            below = r.name == baseline  # an InRa lam=0 point sits on the baseline: keep the two labels apart
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, -10 if below else 4), fontsize=7)
    if baseline is not None:
        base = find_row(rows, baseline)
        ax.axhline(base.pass_at_1, color="grey", linestyle="--", linewidth=0.8)
        ax.axvline(base.mean_tokens, color="grey", linestyle="--", linewidth=0.8)
        ax.plot([base.mean_tokens], [base.pass_at_1], marker="*", markersize=14, color="black", linestyle="none",
                label=f"{base.name} (baseline)")  # fmt: skip
    ax.set(xlabel="mean completion tokens", ylabel="Pass@1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)

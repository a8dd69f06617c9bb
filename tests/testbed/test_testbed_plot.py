"""The testbed's two-panel figure: all problems and hard ones, every row a point with its interval."""

from __future__ import annotations

import pytest

from flexrealign.eval.results import Row
from flexrealign.testbed.paired import Outcome
from flexrealign.testbed.plot import plot_testbed, point


def test_point_is_mean_tokens_pass_at_1_and_the_normal_interval() -> None:
    outs = [Outcome(i < 3, 10 * (i + 1), "careful", 6) for i in range(4)]  # 3 of 4 right, tokens 10..40
    tokens, acc, half = point(outs)
    assert (tokens, acc) == (25.0, 75.0)
    assert half == pytest.approx(100 * 1.959964 * (0.75 * 0.25 / 4) ** 0.5)


def test_plot_has_two_panels(tmp_path) -> None:
    import matplotlib.image

    samples = {
        name: {(f"p{i}", 0): Outcome(i % k == 0, 20 + i, "careful", 2 + i % 5) for i in range(40)}
        for name, k in (("reference", 2), ("inra@0", 2), ("inra@1", 3))
    }
    rows = [Row("reference", "reference", None, 40, 40, 50.0, 39.5, 0.0),
            Row("inra", "InRa", 0.0, 40, 40, 50.0, 39.5, 0.0), Row("inra", "InRa", 1.0, 40, 40, 35.0, 39.5, 0.0),
            Row("missing", "x", None, 40, 40, 1.0, 1.0, 0.0)]  # fmt: skip
    path = plot_testbed(rows, samples, 5, tmp_path / "plot.png")
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 1.8 * height  # two panels side by side
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left

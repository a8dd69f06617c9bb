"""`flexrealign calibrate`: measure thinking tokens and Pass@1 per lam, and write the reasoning_effort table.

Runs the evaluation harness (resumable: generations go to --work-dir) on the first --n-problems of a
benchmark at each --lam, then writes the curve, an effort table (none/low/medium/high) and the `auto` policy
(a probe of the prompt's hidden state that picks the short-thinking lam where it will do; see
`flexrealign.decoding.autofit`) into the checkpoint as flexrealign_calibration.json, atomically, and reads it
back through the same checks as `flexrealign serve` and the vLLM plugin, which map a request's
`reasoning_effort` to the fields of its entry (a lam, a budget; see docs/thinking.md for the keys an edited
entry may take) and steer a soft landing of a thinking budget by the curve.

Example: flexrealign calibrate --model ckpt/ --benchmark math500 --lam -0.5 0 0.5 1 1.5 --n-problems 50
"""

from __future__ import annotations

from flexrealign.eval.calibration_run import CalibrateArgs, calibrate, curve_from_generations  # noqa: F401


def run(argv: list[str]) -> int:
    """`flexrealign calibrate`: measure, write the file, then load it back as the server and the vLLM plugin
    will (every value checked) and print it.

    Args:
        argv: the command's flags.

    Returns:
        The exit status: 0, or 2 with the error on stderr.
    """
    from flexrealign.commands._args import fail, parse
    from flexrealign.decoding.calibration import load_calibration

    (args,) = parse([CalibrateArgs], argv, "calibrate", __doc__.splitlines()[0])
    try:
        path = calibrate(args)
        cal = load_calibration(path.parent)
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    if cal is None:
        return fail(f"{path} is missing right after it was written")
    print(f"{'lam':>6} {'thinking tokens':>16} {'pass@1':>7}")
    for p in cal.curve:
        print(f"{p.lam:>6g} {p.mean_thinking_tokens:>16.1f} {p.pass_at_1:>7.1f}")
    print("efforts: " + ", ".join(f"{k}={e.to_json()}" for k, e in cal.efforts.items()))
    if cal.auto is not None:
        fit = cal.meta.get("auto_fit", {})
        print(f"auto: lam {cal.auto.lam_easy:g} where the probe says it answers right (p >= "
              f"{cal.auto.threshold:.2f}), else {cal.auto.lam_hard:g}; out of fold: {fit}")  # fmt: skip
    print(f"wrote {path}")
    return 0

"""`flexrealign lm-eval`: lm-evaluation-harness with the `flexrealign` model registered (a pass-through).

    flexrealign lm-eval --model flexrealign --model_args pretrained=CKPT,lam=0.5 --tasks gsm8k --batch_size 8
    flexrealign lm-eval --model flexrealign --model_args pretrained=REF,aligned=ALIGNED,lam=1.5 --tasks arc_easy
    flexrealign lm-eval --model flexrealign --model_args pretrained=model.gguf --tasks hellaswag   (plain model)

Every argument goes to lm-eval's own command line (`lm-eval run --help` lists them); this command only registers
the model class first, because lm-eval has no entry point through which another package can add a model. The
model's arguments are described in `flexrealign.eval.lm_eval_model`: pretrained, aligned, base, lam, dtype,
device. From Python: `import flexrealign.eval.lm_eval_model`, then `lm_eval.simple_evaluate(model="flexrealign",
model_args="pretrained=CKPT,lam=0.5", tasks=[...])`.
"""

from __future__ import annotations

import sys


def run(argv: list[str]) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate

        import flexrealign.eval.lm_eval_model  # noqa: F401  (registers the "flexrealign" model)
    except ImportError as e:
        print(
            f"error: flexrealign lm-eval needs lm-eval: pip install 'flexrealign[lm-eval]' ({e})",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        argv = ["run", "--help"]
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        sys.argv = saved
    return 0

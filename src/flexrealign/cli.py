"""The `flexrealign` command: a thin dispatcher to `flexrealign.commands.<name>.run(argv)`.

Each command module parses its own arguments (dataclasses + HfArgumentParser/TrlParser, so a YAML `--config`
and flags set the same fields) and is imported only when used, which keeps `flexrealign --help` fast.
"""

from __future__ import annotations

import importlib
import sys

LAM_HELP = (
    "lam sets the alignment strength per token: the next-token distribution is "
    "softmax(lam * aligned_logits + (1 - lam) * ref_logits). lam = 0 is the reference (base) model, lam = 1 the "
    "aligned model (for InRa: the model with its layer adapter), 0 < lam < 1 interpolates between them, lam > 1 "
    "extrapolates past the aligned model (e.g. thinks even shorter) and lam < 0 moves away from it (e.g. thinks "
    "longer). Any finite real is allowed."
)

# name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the slow/fast-thinking testbed end to end on this CPU and write a results folder"),
    "generate": ("generate", "generate text from an InRa model, a DeRa pair or a plain model at a given lam"),
    "export": ("export", "turn an InRa checkpoint into a plain lam = 1 checkpoint or an adapter-only folder"),
    "convert-llama2c": (
        "convert_llama2c",
        "convert a llama2.c checkpoint (.bin + tokenizer) to Hugging Face format",
    ),
    "convert-gguf": (
        "convert_gguf",
        "convert a GGUF model file (llama.cpp) to a Hugging Face safetensors folder with its chat template",
    ),
    "trra": ("trra", "training-time realignment: distil the reference model toward the lam-fused teacher"),
    "inra-train": ("inra_train", "train an InRa layer adapter by SFT, DPO or TrRa"),
    "data": ("data", "data preparation: filter by length, short-CoT extraction, preference pairs"),
    "analyze": ("analyze", "research analyses from the paper (layer significance, adapter init)"),
    "eval": ("eval", "evaluate models on math benchmarks over a sweep of lam"),
    "lm-eval": ("lmeval", "lm-evaluation-harness with the `flexrealign` model (any checkpoint at any lam)"),
    "serve": ("serve", "an OpenAI-compatible HTTP server with per-request lam"),
    "calibrate": (
        "calibrate",
        "measure thinking tokens and Pass@1 per lam; write the reasoning_effort table",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: flexrealign <command> [options]   (flexrealign <command> --help for details)",
        "",
        "Flexible realignment of language models (arXiv 2506.12704): change how strongly a model is aligned,",
        "by a number lam, at training time (TrRa) and at inference time (InRa).",
        "",
        LAM_HELP,
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from flexrealign import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"flexrealign: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"flexrealign.commands.{COMMANDS[name][0]}")
    return int(module.run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

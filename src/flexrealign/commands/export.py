"""`flexrealign export`: convert between InRa checkpoint forms.

--format aligned : a plain lam = 1 checkpoint with no InRa metadata (runs anywhere, like any HF model)
--format adapter : only the adapter layers (safetensors + inra_config.json), for small uploads
--format inra    : a full InRa checkpoint (e.g. from an adapter folder plus its base model)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Literal

from flexrealign.commands._args import fail, parse
from flexrealign.conversion.loading import load_model, load_tokenizer
from flexrealign.core.checkpoint import atomic_dir
from flexrealign.core.inra import InRaModel


@dataclass
class ExportArgs:
    checkpoint: str = field(metadata={"help": "InRa checkpoint or adapter-only folder (path or Hub name)."})
    output_dir: str = field(metadata={"help": "Where to write the export (replaced atomically)."})
    format: Literal["aligned", "adapter", "inra"] = field(
        default="aligned", metadata={"help": "aligned | adapter | inra (see above)."}
    )
    base: str | None = field(
        default=None, metadata={"help": "Base model for an adapter-only input (default: the recorded one)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code (off by default)."}
    )


def run(argv: list[str]) -> int:
    (args,) = parse([ExportArgs], argv, "export", __doc__)
    model = load_model(args.checkpoint, "auto", "cpu", args.trust_remote_code, args.base)
    if not isinstance(model, InRaModel):
        return fail(f"{args.checkpoint} is not an InRa checkpoint or adapter folder")
    tokenizer = _tokenizer_or_none(args)
    if args.format == "adapter":
        model.save_adapter(args.output_dir)
    elif args.format == "inra":
        model.save_pretrained(args.output_dir, tokenizer=tokenizer)
    else:
        _export_aligned(model, args.output_dir, tokenizer)
    print(f"wrote {args.format} export to {args.output_dir}")
    return 0


def _export_aligned(model: InRaModel, output_dir: str, tokenizer) -> None:
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp / "inra", tokenizer=tokenizer)
        aligned = model.to_aligned_model()
        del aligned.config.inra  # a plain model: nothing will treat it as two-path
        aligned.save_pretrained(tmp / "plain")
        for item in (tmp / "plain").iterdir():
            shutil.move(str(item), tmp / item.name)
        for item in (tmp / "inra").iterdir():  # tokenizer files
            if not (tmp / item.name).exists() and not item.name.startswith(("model", "config")):
                shutil.move(str(item), tmp / item.name)
        shutil.rmtree(tmp / "inra")
        shutil.rmtree(tmp / "plain")


def _tokenizer_or_none(args: ExportArgs):
    try:
        return load_tokenizer(args.checkpoint, args.trust_remote_code, args.base)
    except Exception:  # an export without a tokenizer is still useful; say so
        print("note: no tokenizer found next to the checkpoint; the export has none")
        return None

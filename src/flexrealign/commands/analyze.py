"""`flexrealign analyze`: the paper's §5 analyses in small, on any model and prompt/completion data.

  flexrealign analyze layers --model M --dataset data.jsonl --k 2     Table 3: bottom-k vs top-k layers
  flexrealign analyze init --model M --dataset data.jsonl             Table 4: identity vs kaiming adapter init

The last --num_heldout records are held out; the rest train every variant with the same budget (steps,
learning rate, batches in the same order). Prints a table; --output also writes it as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from flexrealign.commands._args import fail, parse
from flexrealign.conversion.loading import load_plain, load_tokenizer
from flexrealign.core.atomic import atomic_file
from flexrealign.training.data_prep import load_any_dataset
from flexrealign.training.inra_train.analysis import (
    Budget,
    batches,
    format_table,
    init_ablation,
    layer_significance,
    text_pair,
)

TITLES = {
    "layers": "Layer significance (paper Table 3): fine-tune only the bottom-k vs only the top-k layers",
    "init": "Adapter initialisation (paper Table 4): identity vs kaiming",
}


@dataclass
class AnalyzeArgs:
    model: str = field(metadata={"help": "Model to analyse: a local folder, a Hub name or a .gguf file."})
    dataset: str = field(
        metadata={"help": "prompt/completion (or prompt/chosen, or messages) .jsonl or Hub name."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    max_samples: int = field(default=256, metadata={"help": "Use the first N records (train + held-out)."})
    num_heldout: int = field(default=32, metadata={"help": "Records at the end held out for the loss."})
    k: int = field(default=1, metadata={"help": "layers: how many bottom / top layers to fine-tune."})
    num_adapter_layers: int = field(default=1, metadata={"help": "init: adapter layers (paper Table 7)."})
    steps: int = field(default=50, metadata={"help": "Optimizer steps per variant."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate for every variant."})
    batch_size: int = field(default=4, metadata={"help": "Sequences per step."})
    max_length: int = field(default=512, metadata={"help": "Truncate sequences to this many tokens."})
    dtype: str = field(default="float32", metadata={"help": "Load the model in this dtype."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoint (off by default)."}
    )
    output: str | None = field(default=None, metadata={"help": "Also write the table as JSON here."})


def run(argv: list[str]) -> int:
    usage = "usage: flexrealign analyze {layers,init} --model M --dataset D [options]"
    if argv and argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{__doc__}")
        return 0
    if not argv or argv[0] not in TITLES:
        return fail(usage)
    which, rest = argv[0], argv[1:]
    (args,) = parse([AnalyzeArgs], rest, f"analyze {which}", __doc__)
    try:
        model = load_plain(args.model, args.dtype, args.trust_remote_code).eval()
        tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    except (ValueError, ImportError) as e:  # CheckpointError included: names the path
        return fail(str(e))
    records = load_any_dataset(args.dataset, args.dataset_config, args.split, args.max_samples)
    pairs = [text_pair(r, tokenizer) for r in records]
    if len(pairs) <= args.num_heldout:
        return fail(f"{len(pairs)} records: need more than --num_heldout {args.num_heldout}")
    cut = len(pairs) - args.num_heldout
    budget = Budget(
        args.steps,
        args.learning_rate,
        batches(tokenizer, pairs[:cut], args.batch_size, args.max_length),
        batches(tokenizer, pairs[cut:], args.batch_size, args.max_length),
    )
    try:
        rows = (
            layer_significance(model, args.k, budget)
            if which == "layers"
            else init_ablation(model, budget, args.num_adapter_layers)
        )
    except ValueError as e:
        return fail(str(e))
    print(format_table(rows, TITLES[which]))
    if args.output:
        report = {"analysis": which, "args": vars(args), "rows": [r.to_dict() for r in rows]}
        with atomic_file(args.output) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return 0

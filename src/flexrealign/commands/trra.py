"""`flexrealign trra`: training-time realignment (TrRa, TrRa-iter), and `flexrealign trra cache-teachers`.

    flexrealign trra --config configs/paper/trra_lam2.yaml [--lam 5 --output_dir runs/lam5 ...]
    flexrealign trra cache-teachers --config cfg.yaml --teacher_cache cache/openr1
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m flexrealign.cli trra --config cfg.yaml

Every field of TrRaConfig (TRL's SFTConfig plus the TrRa fields) and of the data arguments is a flag and a key of
the YAML file given by --config; flags override the file.
"""

from __future__ import annotations

from flexrealign.commands._args import fail, parse
from flexrealign.core.checkpoint import CheckpointError

DESCRIPTION = (
    "Training-time realignment (paper §3.1): train a student (initialised from ref_model) to match, on the "
    "completion tokens of the data, the teacher softmax(lam * aligned + (1 - lam) * ref); --iterations k > 1 runs "
    "TrRa-iter. Subcommand `cache-teachers` stores both teachers' hidden states once for a sweep over lam."
)


def run(argv: list[str]) -> int:
    if argv and argv[0] == "cache-teachers":
        return _cache_teachers(argv[1:])
    return _train(argv)


def _train(argv: list[str]) -> int:
    from flexrealign.training.trra import DataArguments, TrRaConfig, run_trra

    config, data = parse([TrRaConfig, DataArguments], argv, "trra", DESCRIPTION)
    try:
        model_dir = run_trra(config, data)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError included: bad input, explained
        return fail(str(e))
    print(f"realigned model written to {model_dir}")
    return 0


def _cache_teachers(argv: list[str]) -> int:
    from flexrealign.training.trra import DataArguments, TrRaConfig, build_teacher_cache
    from flexrealign.training.trra.data import load_rows

    config, data = parse([TrRaConfig, DataArguments], argv, "trra cache-teachers", DESCRIPTION)
    if data.dataset_name is None:
        return fail("dataset_name is required")
    try:
        if not config.teacher_cache or config.ref_model is None or config.aligned_model is None:
            raise ValueError("cache-teachers needs --teacher_cache DIR, --ref_model and --aligned_model")
        rows = load_rows(data.dataset_name, data.dataset_config, data.dataset_split, data.max_samples)
        cache_dir = build_teacher_cache(config, rows)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        return fail(str(e))
    print(f"teacher cache written to {cache_dir}")
    return 0

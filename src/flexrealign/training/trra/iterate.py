"""Running TrRa end to end, and TrRa-iter (paper §3.1): k rounds, each realigning the reference toward the last.

Round 1 is plain TrRa with (ref_model, aligned_model). Round r > 1 runs the same configuration with round r-1's
student as the aligned model, so (reference, previous student) are the teachers. With one round, the Trainer
writes its checkpoints to `output_dir` and the realigned model goes to `output_dir/model`; with k > 1 rounds, round
r uses `output_dir/round-<r>` and `output_dir/round-<r>/model`. Each model folder is written atomically.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path

from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint

from flexrealign.core.checkpoint import atomic_dir
from flexrealign.training.trra.config import TrRaConfig
from flexrealign.training.trra.data import DataArguments, load_rows, prepare_dataset
from flexrealign.training.trra.loss import teacher_parts
from flexrealign.training.trra.models import check_loadable, load_tokenizer
from flexrealign.training.trra.trainer import TrRaTrainer

MODEL_DIR = "model"


def round_dir(config: TrRaConfig, r: int) -> Path:
    """Where round r (1-based) keeps its checkpoints and model."""
    return Path(config.output_dir) if config.iterations == 1 else Path(config.output_dir) / f"round-{r}"


def check_models(config: TrRaConfig) -> None:
    """Fail fast (before any data work) on a missing or unreadable model."""
    if config.ref_model is None:
        raise ValueError("ref_model is required (a local folder or a Hub name)")
    needed = {"ref": config.ref_model, "student": config.student_model}
    if config.teacher_cache is None and "aligned" in teacher_parts(config.lam):
        if config.aligned_model is None:
            raise ValueError(f"lam={config.lam} needs aligned_model (or a teacher_cache)")
        needed["aligned"] = config.aligned_model
    for role, name in needed.items():
        if name is not None:
            check_loadable(name, role, config.trust_remote_code)


def save_model(trainer: TrRaTrainer, directory: str | os.PathLike) -> Path:
    """Write the trained student and its tokenizer (safetensors) atomically; collective under DDP/FSDP/ZeRO-3."""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # full weights on the main process
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        with atomic_dir(directory) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            trainer.processing_class.save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()
    return Path(directory)


def _resume_arg(config: TrRaConfig, folder: Path) -> str | None:
    """`resume_from_checkpoint`: 'true' (or 'last') resumes each round from its latest checkpoint, if any."""
    value = config.resume_from_checkpoint
    if value is None:
        return None
    if str(value).lower() in ("true", "last"):
        return get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if config.iterations > 1:
        raise ValueError(
            "with iterations > 1, set resume_from_checkpoint to 'true' (each round finds its own)"
        )
    return str(value)


def run_trra(config: TrRaConfig, data: DataArguments | Dataset) -> Path:
    """Train `config.iterations` TrRa rounds on `data` and return the last round's model folder.

    With `resume_from_checkpoint` set, rounds whose model folder exists are skipped, so an interrupted TrRa-iter
    run picks up where it stopped.
    """
    check_models(config)
    tokenizer = load_tokenizer(config.ref_model, "ref", config.trust_remote_code)
    if isinstance(data, DataArguments):
        if data.dataset_name is None:
            raise ValueError("dataset_name is required (a .jsonl/.parquet file or a datasets name)")
        data = load_rows(data.dataset_name, data.dataset_config, data.dataset_split, data.max_samples)
    with config.main_process_first(desc="tokenizing the TrRa data"):
        dataset = prepare_dataset(data, tokenizer, config.max_length, config.dataset_num_proc)
    aligned = config.aligned_model
    for r in range(1, config.iterations + 1):
        folder = round_dir(config, r)
        model_dir = folder / MODEL_DIR
        if config.resume_from_checkpoint is not None and (model_dir / "config.json").exists():
            aligned = str(model_dir)  # finished in an earlier run
            continue
        round_config = dataclasses.replace(config, output_dir=str(folder), aligned_model=aligned)
        trainer = TrRaTrainer(args=round_config, train_dataset=dataset, processing_class=tokenizer)
        trainer.train(resume_from_checkpoint=_resume_arg(config, folder))
        aligned = str(save_model(trainer, model_dir))
        del trainer
        gc.collect()  # free this round's three models before the next round loads its own
    return Path(aligned)

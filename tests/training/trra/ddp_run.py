"""A short TrRa run for test_trra_distributed: under `accelerate launch` (2 processes) or imported (1).

    python ddp_run.py MODELS_DIR OUT_DIR PER_DEVICE_BATCH [LMBDA]
writes OUT_DIR/losses.json ({step: loss}, the distributed type, each rank's share of the student's parameters) and
OUT_DIR/model (the trained student).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from trra_helpers import make_rows, trra_config

from flexrealign.training.distributed import all_processes, close_process_group, parameter_share
from flexrealign.training.trra import TrRaTrainer
from flexrealign.training.trra.iterate import save_model

STEPS, GLOBAL_BATCH = 6, 4


def main(models_dir: Path, out: Path, per_device: int, lmbda: float = 0.0) -> None:
    dirs = {"ref": models_dir / "ref", "aligned": models_dir / "aligned"}
    config = trra_config(
        out,
        dirs,
        per_device_train_batch_size=per_device,
        max_steps=STEPS,
        lam=2.0,
        lmbda=lmbda,
        max_new_tokens=8,
    )
    trainer = TrRaTrainer(args=config, train_dataset=make_rows(64))
    assert trainer.args.world_size * per_device == GLOBAL_BATCH, "the runs must share one global batch"
    trainer.train()
    shards = all_processes(parameter_share(trainer.model_wrapped))
    save_model(trainer, out / "model")
    if trainer.accelerator.is_main_process:
        losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
        (out / "losses.json").write_text(
            json.dumps(
                {
                    "world_size": trainer.args.world_size,
                    "distributed_type": str(trainer.accelerator.distributed_type),
                    "shards": shards,
                    "losses": losses,
                }
            )
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), *map(float, sys.argv[4:]))
    close_process_group()
    # The run's work is written. End without interpreter finalization, where C++ threads left by gloo or DeepSpeed
    # can still abort the process ("terminate called without an active exception", seen once in a ZeRO-3 CPU run
    # after its training had finished); the launcher would report that as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

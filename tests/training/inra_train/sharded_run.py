"""A short adapter-only InRa run for test_inra_train_sharded: under `accelerate launch` (2 processes) or imported (1).

    python sharded_run.py BASE DATA OUT PER_DEVICE METHOD [ALIGNED]
trains by METHOD (sft or trra, toward ALIGNED), saves the InRa checkpoint to OUT and writes OUT/run.json: the
distributed type, the losses per step, and each process's share of the base and of the adapter.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState

from flexrealign.training.distributed import all_processes, close_process_group, parameter_share
from flexrealign.training.inra_train import InRaTrainConfig, train_inra

STEPS = 3


def main(base: Path, data: Path, out: Path, per_device: int, method: str, aligned: str | None = None) -> None:
    config = InRaTrainConfig(
        base_model=str(base), dataset=str(data), output_dir=str(out), method=method, aligned_model=aligned,
        lam=2.0, max_steps=STEPS, per_device_train_batch_size=per_device, learning_rate=3e-3, warmup_ratio=0,
        logging_steps=1, use_cpu=True,
    )  # fmt: skip
    result = train_inra(config)
    model = result.model
    shares = all_processes(
        {
            "base": parameter_share(model.base),
            "adapter": parameter_share(model.adapter),
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        }
    )
    state = PartialState()
    if state.is_main_process:
        record = {
            "world_size": state.num_processes,
            "distributed_type": str(state.distributed_type),
            "shares": shares,
            "losses": {e["step"]: e["loss"] for e in result.log_history if "loss" in e},
        }
        (out / "run.json").write_text(json.dumps(record))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), Path(args[1]), Path(args[2]), int(args[3]), args[4], *args[5:])
    close_process_group()
    # The run's work is written. End without interpreter finalization, where C++ threads left by gloo or DeepSpeed
    # can still abort the process ("terminate called without an active exception", seen once in a ZeRO-3 CPU run
    # after its training had finished); the launcher would report that as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""FSDP with CPU processes (gloo), which accelerate's launcher accepts but does not build.

`accelerate launch` with `distributed_type: FSDP` and `use_cpu: true` starts the processes and exports
ACCELERATE_USE_FSDP / FSDP_*, but accelerate (checked up to 1.15) turns a run into FSDP only when its processes
are GPU-like (MULTI_GPU, MULTI_XPU, ...). CPU processes stay MULTI_CPU, so the model is silently wrapped in DDP
and nothing is sharded. PyTorch's FSDP2 (`fully_shard`) itself runs on CPU over gloo, and so does accelerate's
FSDP2 code path once the run is typed FSDP. `fsdp_on_cpu` types it so, around the one place where the
`Accelerator` is built (the Trainer's `create_accelerator_and_postprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.state import is_initialized
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.tensor import DTensor

T = TypeVar("T")


def fsdp_requested() -> bool:
    """True when `accelerate launch` was given an FSDP config (it exports ACCELERATE_USE_FSDP=true)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


@contextmanager
def fsdp_on_cpu() -> Iterator[None]:
    """Build the Accelerator inside this block as an FSDP run when FSDP was asked for on CPU processes.

    AcceleratorState picks FSDP from the process type it copies from PartialState when it is first built; for
    that moment the CPU processes are presented as MULTI_GPU (they keep their CPU device and gloo group), and it
    then records FSDP in both states, as it does on GPUs. Outside that case (GPUs, DDP, one process, an
    Accelerator already built) this does nothing.
    """
    if not PartialState._shared_state:  # no process state yet (TrainingArguments builds it): nothing to type
        yield
        return
    state = PartialState()
    promote = (
        fsdp_requested()
        and state.distributed_type == DistributedType.MULTI_CPU
        and not is_initialized()  # AcceleratorState is built once per process; later Accelerators reuse it
    )
    if not promote:
        yield
        return
    state.distributed_type = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        # A built AcceleratorState has written FSDP back into PartialState (as on GPUs); else undo the change.
        if state.distributed_type == DistributedType.MULTI_GPU:
            state.distributed_type = DistributedType.MULTI_CPU


def _local_numel(p: torch.Tensor) -> int:
    if isinstance(p, DTensor):  # FSDP2: this process's shard
        return p.to_local().numel()
    if hasattr(p, "ds_tensor"):  # ZeRO-3: this process's partition, plus the full tensor while it is gathered
        return p.ds_tensor.numel() + p.data.numel()
    return p.numel()


def parameter_share(model: nn.Module) -> dict[str, int]:
    """This process's share of `model`'s parameters, to check that a run really is sharded (FSDP2 or ZeRO-3).

    Returns {"local_numel": elements stored by this process, "full_numel": elements of the whole model, "sharded":
    how many parameters are sharded (FSDP2 DTensors or ZeRO-3 partitions), "tensors": how many parameters}.
    Unsharded, local equals full.
    """
    params = list(model.parameters())
    return {
        "local_numel": sum(_local_numel(p) for p in params),
        "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "sharded": sum(isinstance(p, DTensor) or hasattr(p, "ds_tensor") for p in params),
        "tensors": len(params),
    }


def all_processes(value: T) -> list[T]:
    """`value` from every process, in rank order (a collective: all must call it); [value] when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def close_process_group() -> None:
    """Destroy the default process group, if any, before the process ends.

    A gloo group left open can abort the interpreter at exit ("terminate called without an active exception",
    seen once in a 2-process FSDP2 run on CPU after all its work was done), which the launcher reports as a
    failure. The tests' launched scripts call this last.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

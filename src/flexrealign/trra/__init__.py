"""Training-time realignment (TrRa, paper §3.1): distil the reference model toward the lam-fused teacher
softmax(lam * aligned_logits + (1 - lam) * ref_logits), in memory-bounded chunks, on one or many machines."""

from flexrealign.trra.config import TrRaConfig
from flexrealign.trra.data import DataArguments
from flexrealign.trra.iterate import run_trra
from flexrealign.trra.loss import divergence_sum, trra_loss
from flexrealign.trra.teacher_cache import TeacherCache, build_teacher_cache
from flexrealign.trra.trainer import TrRaTrainer

__all__ = [
    "DataArguments",
    "TeacherCache",
    "TrRaConfig",
    "TrRaTrainer",
    "build_teacher_cache",
    "divergence_sum",
    "run_trra",
    "trra_loss",
]

"""Training-time realignment (TrRa, paper §3.1): distil the reference model toward the lam-fused teacher
softmax(lam * aligned_logits + (1 - lam) * ref_logits), in memory-bounded chunks, on one or many machines."""

from flexrealign.training.trra.config import TrRaConfig
from flexrealign.training.trra.data import DataArguments
from flexrealign.training.trra.iterate import run_trra
from flexrealign.training.trra.loss import divergence_sum, trra_loss
from flexrealign.training.trra.teacher_cache import TeacherCache, build_teacher_cache
from flexrealign.training.trra.trainer import TrRaTrainer

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

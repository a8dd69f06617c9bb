"""flexrealign: change how strongly a language model is aligned, by a number lam, at training and inference time.

Implements "Flexible Realignment of Language Models" (arXiv 2506.12704): logit fusion (DeRa), training-time
realignment (TrRa) and inference-time realignment with a layer adapter (InRa), on Hugging Face models.
"""

from __future__ import annotations

import importlib
from typing import Any

from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.dera import DeRa
from flexrealign.core.fusion import fuse_logits
from flexrealign.core.inra import InRaModel
from flexrealign.decoding.dial import ThinkingLimits
from flexrealign.decoding.generation import GenerationResult, LamSchedule, chat, generate

__version__ = "0.1.0"

# Training classes pull in TRL and datasets; import them only when asked for.
_LAZY = {
    "TrRaConfig": "flexrealign.training.trra",
    "TrRaTrainer": "flexrealign.training.trra",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flexrealign' has no attribute {name!r}")


__all__ = [
    "AdapterConfig",
    "DeRa",
    "GenerationResult",
    "InRaModel",
    "LamSchedule",
    "ThinkingLimits",
    "TrRaConfig",
    "TrRaTrainer",
    "__version__",
    "chat",
    "fuse_logits",
    "generate",
]

"""The names the plugin's modules share: kept in a leaf module, so the package, its config hooks and its
logits processor import them without importing each other."""

from __future__ import annotations

from flexrealign.core.families import VLLM_CLASSES

# base architecture (config.json "architectures") -> the InRa class registered for it: the family table's
# `vllm_class` entries (flexrealign.core.families), under the name the plugin's modules import
INRA_ARCHITECTURES: dict[str, str] = VLLM_CLASSES
MODELS_MODULE = "flexrealign.vllm_plugin.models"
LOGITS_PROCESSOR_FQCN = "flexrealign.vllm_plugin.logits:InRaLogitsProcessor"
LAM_KEY = "lam"  # the SamplingParams.extra_args / vllm_xargs key carrying a request's lam

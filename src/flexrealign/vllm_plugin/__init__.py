"""InRa on stock vLLM (V1), through vLLM's plugin points: per-request lam, several lam values in one batch.

`pip install flexrealign[vllm]` installs the `vllm.general_plugins` entry point `flexrealign_inra`, which
vLLM calls in every process it starts. `register()` then:

1. registers the InRa model classes (`InRaQwen2ForCausalLM`, ..., one per family of `flexrealign.core.families`
   with a `vllm_class`) with `ModelRegistry`;
2. wraps the "hf" config parser so that a checkpoint whose config.json has an `inra` entry selects the
   InRa class of its architecture (the saved `architectures` stay unchanged, so plain Hugging Face still
   loads the lam = 1 model), and an InRa checkpoint of an architecture without an InRa class fails clearly;
3. adds a config hook for the InRa architectures that installs the fusing logits processor and switches
   logprobs to the processed (fused) distribution;
4. makes vLLM choose stop strings by flexrealign's rule (`flexrealign.decoding.stopping`), as `generate` does.

So `vllm serve PATH` and `LLM(PATH)` work with no extra flags; each request picks its lam with
`SamplingParams(extra_args={"lam": 0.5})` or, over HTTP, `"vllm_xargs": {"lam": 0.5}` (default 1.0).
This module imports vLLM only inside `register()`, so importing flexrealign never needs vLLM.
"""

from __future__ import annotations

from flexrealign.vllm_plugin.names import INRA_ARCHITECTURES, LAM_KEY, LOGITS_PROCESSOR_FQCN, MODELS_MODULE

_registered = False


def register() -> None:
    """The `vllm.general_plugins` entry point; safe to call more than once (vLLM calls it per process)."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    from flexrealign.vllm_plugin.config import register_config_hooks
    from flexrealign.vllm_plugin.stops import use_flexrealign_stop_rule

    for inra_arch in INRA_ARCHITECTURES.values():
        # A lazy "module:Class" string keeps vLLM's model modules unimported until a model is loaded.
        ModelRegistry.register_model(inra_arch, f"{MODELS_MODULE}:{inra_arch}")
    register_config_hooks()
    use_flexrealign_stop_rule()
    _registered = True


__all__ = ["INRA_ARCHITECTURES", "LAM_KEY", "LOGITS_PROCESSOR_FQCN", "register"]

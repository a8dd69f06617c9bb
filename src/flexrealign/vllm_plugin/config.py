"""How an InRa checkpoint selects the InRa model classes, and the engine settings those classes need.

Two vLLM hooks, both installed by `register()`:

* the "hf" config parser (public API `register_config_parser`) is wrapped: after the stock parser reads
  config.json, an `inra` entry swaps `architectures` in the *in-memory* config for the InRa class name. The
  file on disk is untouched, so Hugging Face keeps loading the lam = 1 model from the same folder;
* `MODELS_CONFIG_MAP`, vLLM's per-architecture `verify_and_update_config` hook (the one in-tree models use
  to adjust the engine config), gets an entry per InRa class. It runs the base architecture's own hook (the
  InRa class name hides it from vLLM), adds the fusing logits processor and makes logprobs come from the
  processed logits, i.e. the fused distribution rather than the raw 2V-wide row.

And one wrap of vLLM's prefix-cache block hashing (`salt_prefix_cache_by_paths`): a step that runs one path
leaves the other path's KV cache unwritten for its tokens, so a cached block may only be reused by a request
that needs no more paths than the request that wrote it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from flexrealign.core.adapter import base_model_config
from flexrealign.vllm_plugin.names import INRA_ARCHITECTURES, LOGITS_PROCESSOR_FQCN

if TYPE_CHECKING:
    from transformers import PretrainedConfig
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)

# Raw modes would report the model's 2V-wide output row (both paths side by side); the processed modes
# report what the sampler saw, which is the fused row.
_PROCESSED_LOGPROBS_MODE = {"raw_logprobs": "processed_logprobs", "raw_logits": "processed_logits"}
_path_salt = {"installed": False}


class UnsupportedInRaArchitecture(ValueError):
    """An InRa checkpoint whose architecture has no InRa class in the vLLM plugin."""


def select_inra_architecture(config: PretrainedConfig, source: str = "the checkpoint") -> str | None:
    """If `config` has an `inra` entry, point `config.architectures` at its InRa class (in place).

    Returns the InRa architecture name, or None for an ordinary checkpoint. Raises
    UnsupportedInRaArchitecture for an InRa checkpoint of another architecture, and ValueError for a
    corrupt `inra` entry, before any weight is read.
    """
    if getattr(config, "inra", None) is None:
        return None
    # A config saved without `architectures` (a model built with from_config) names its family by model_type.
    archs = list(getattr(config, "architectures", None) or _causal_lm_class(config.model_type))
    if len(archs) == 1 and archs[0] in INRA_ARCHITECTURES.values():
        return archs[0]  # already selected (the parser can run twice on one config)
    if len(archs) != 1 or archs[0] not in INRA_ARCHITECTURES:
        raise UnsupportedInRaArchitecture(
            f"{source} is an InRa checkpoint (config.json has an 'inra' entry) of architecture {archs}, "
            f"which flexrealign's vLLM plugin does not serve; it serves {sorted(INRA_ARCHITECTURES)}. "
            "To serve its plain lam = 1 model instead, disable the plugin for this run (set VLLM_PLUGINS to a "
            "list of plugins without 'flexrealign_inra')."
        )
    base_model_config(config.get_text_config())  # validates adapter_layers against num_hidden_layers
    config.architectures = [INRA_ARCHITECTURES[archs[0]]]
    return config.architectures[0]


def _causal_lm_class(model_type: str) -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return [name] if isinstance(name, str) else []


def _inra_parser_class(inner: type) -> type:
    """A subclass of the currently registered "hf" parser that also selects the InRa architecture."""

    def parse(self: Any, model: Any, trust_remote_code: bool, *args: Any, **kwargs: Any) -> tuple:
        config_dict, config = inner.parse(self, model, trust_remote_code, *args, **kwargs)
        select_inra_architecture(config, source=str(model))
        return config_dict, config

    return type("InRaHFConfigParser", (inner,), {"parse": parse, "__doc__": _inra_parser_class.__doc__})


class InRaEngineConfig:
    """`verify_and_update_config` for the InRa architectures: what the 2V-wide logits need downstream.

    `stock` is vLLM's own hook of the base architecture (gpt-oss has one), which still runs first:
    `engine_config_for` makes the per-architecture subclass.
    """

    stock: ClassVar[Any] = None

    @classmethod
    def verify_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from flexrealign.vllm_plugin.requests import record_served_model  # imports vLLM: only once it runs

        if cls.stock is not None:
            cls.stock.verify_and_update_config(vllm_config)
        model_config = vllm_config.model_config
        record_served_model(model_config)
        procs = list(model_config.logits_processors or [])
        if not any(is_inra_logits_processor(p) for p in procs):
            model_config.logits_processors = [*procs, LOGITS_PROCESSOR_FQCN]
        mode = model_config.logprobs_mode
        if mode in _PROCESSED_LOGPROBS_MODE:
            model_config.logprobs_mode = _PROCESSED_LOGPROBS_MODE[mode]
            logger.info(
                "InRa: logprobs_mode %s -> %s (the fused distribution)", mode, model_config.logprobs_mode
            )
        compilation = getattr(vllm_config, "compilation_config", None)
        if compilation is not None:
            # That option finds a mixture-of-experts layer by how many ran before it in the step; a step
            # that runs the reference path alone starts at its layer n, so layers must be found by name.
            compilation.fast_moe_cold_start = False

    @classmethod
    def verify_and_update_model_config(cls, model_config: Any) -> None:
        if cls.stock is not None:
            cls.stock.verify_and_update_model_config(model_config)
        hf_sliding_rule(model_config.hf_config)


def engine_config_for(stock: Any) -> type[InRaEngineConfig]:
    """The InRa config hook of an architecture whose own vLLM hook is `stock` (None: it has none)."""
    if stock is None:
        return InRaEngineConfig
    return type(f"InRa{stock.__name__}", (InRaEngineConfig,), {"stock": stock})


def hf_sliding_rule(hf_config: Any) -> None:
    """SmolLM3 slides its window only with `use_sliding_window` set, whatever `layer_types` says (Hugging
    Face's rule); vLLM's Llama layers, which serve it, go by `layer_types` and `sliding_window` alone."""
    if getattr(hf_config, "model_type", None) == "smollm3" and not getattr(
        hf_config, "use_sliding_window", False
    ):
        hf_config.sliding_window = None


def is_inra_logits_processor(proc: object) -> bool:
    """Whether an entry of `ModelConfig.logits_processors` (a class or "module:Class") is ours."""
    if isinstance(proc, str):
        return proc == LOGITS_PROCESSOR_FQCN
    return f"{getattr(proc, '__module__', '')}:{getattr(proc, '__qualname__', '')}" == LOGITS_PROCESSOR_FQCN


def check_engine_config(vllm_config: VllmConfig) -> None:
    """Fail clearly when the engine config cannot serve an InRa model (the hooks above did not run, etc.)."""
    model_config = vllm_config.model_config
    if not any(is_inra_logits_processor(p) for p in model_config.logits_processors or []):
        raise ValueError(
            "InRa models need flexrealign's fusing logits processor, which the flexrealign vLLM plugin adds "
            "on its own; add it by hand with --logits-processors " + LOGITS_PROCESSOR_FQCN
        )
    if model_config.logprobs_mode.startswith("raw_"):
        raise ValueError(
            f"InRa models report logprobs of the fused distribution: use --logprobs-mode processed_logprobs "
            f"(or processed_logits), not {model_config.logprobs_mode}"
        )
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise NotImplementedError("InRa on vLLM supports tensor parallelism but not pipeline parallelism")
    if model_config.is_moe and vllm_config.parallel_config.data_parallel_size > 1:
        # Data-parallel experts exchange each rank's token count with the other ranks, and size their
        # dispatch buffers by max_num_batched_tokens; the stacked two-path step feeds them twice as many rows.
        raise NotImplementedError(
            "InRa on vLLM does not support data parallelism for mixture-of-experts models"
        )
    if vllm_config.speculative_config is not None:
        raise NotImplementedError("InRa on vLLM does not support speculative decoding")
    if vllm_config.use_v2_model_runner:
        raise NotImplementedError(
            "InRa on vLLM runs on the V1 model runner (its logits processors); set VLLM_USE_V2_MODEL_RUNNER=0"
        )


def salt_prefix_cache_by_paths() -> None:
    """Add the paths a request needs to its prefix-cache block hashes, unless it is aligned-only.

    Blocks of dual-path requests then hash apart from those of single-path ones (written by steps that may
    have run one path only), so no request reads a KV block whose path was skipped. Aligned-only requests,
    which include every request to a non-InRa model (no lam means lam = 1), hash exactly as before.
    Wraps `vllm.v1.core.kv_cache_utils.generate_block_hash_extra_keys` (the function that adds LoRA and
    cache_salt keys); where a vLLM version lacks it, path skipping is turned off with prefix caching on.
    """
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.core import kv_cache_utils

    from flexrealign.core.fusion import ALIGNED
    from flexrealign.vllm_plugin.requests import request_paths

    inner = getattr(kv_cache_utils, "generate_block_hash_extra_keys", None)
    if inner is None or _path_salt["installed"]:
        return

    def extra_keys(request: Any, start_token_idx: int, *args: Any) -> tuple:
        keys, mm_idx = inner(request, start_token_idx, *args)
        params = getattr(request, "sampling_params", None)
        if start_token_idx == 0 and params is not None:  # later blocks chain on the first one's hash
            try:
                paths = request_paths(params)
            except VLLMValidationError:  # a lam a non-InRa model ignores (InRa engines refuse it up front)
                paths = frozenset({ALIGNED})
            if paths != {ALIGNED}:
                keys = (*(keys or ()), ("flexrealign_inra_paths", ",".join(sorted(paths))))
        return keys, mm_idx

    kv_cache_utils.generate_block_hash_extra_keys = extra_keys
    _path_salt["installed"] = True


def path_salt_installed() -> bool:
    """Whether this process hashes prefix-cache blocks by paths (see `salt_prefix_cache_by_paths`)."""
    return _path_salt["installed"]


def register_config_hooks() -> None:
    """Install the config-parser wrapper and the per-architecture config hook (idempotent)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.transformers_utils.config import get_config_parser, register_config_parser

    inner = type(get_config_parser("hf"))
    if inner.__name__ != "InRaHFConfigParser":
        register_config_parser("hf")(_inra_parser_class(inner))
    for arch, inra_arch in INRA_ARCHITECTURES.items():
        if inra_arch not in MODELS_CONFIG_MAP:  # the stock hook is looked up once, before ours is in place
            MODELS_CONFIG_MAP[inra_arch] = engine_config_for(MODELS_CONFIG_MAP.get(arch))  # type: ignore[assignment]
    salt_prefix_cache_by_paths()

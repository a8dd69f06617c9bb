"""The decoder families InRa supports, and everything flexrealign needs to know about each, in one table.

InRa (`inra.py`), DeRa, export, the tiny test models (`tiny.py`) and the vLLM plugin read `FAMILIES`; nothing
else names a family. Adding a family is one `Family` entry here plus the tests that parametrize over
`FAMILIES` (and, for vLLM, an InRa class in `vllm_plugin/models.py`).

The contract a family must meet, checked by the tests of every entry:

1. **Layout.** Its Hugging Face `*ForCausalLM` holds the decoder at `model.model` with `layers` (an
   `nn.ModuleList`), `rotary_emb`, `norm` and `embed_tokens`, and `model.lm_head`. The decoder's forward takes
   `inputs_embeds` and adds nothing to them (Gemma-3's sqrt(D) scale lives in its embedding module, so both
   paths see scaled embeddings), builds its masks and rotary tables from its config, and ends with `norm`.
   InRa runs its adapter layers through that same forward class (`adapter_runner`), so per-layer masks,
   sliding windows and per-layer-type rotary tables are the family's own code.
2. **Residual branches.** Every decoder layer is `x + f(norm(x))` then `x + g(norm(x))`, possibly with extra
   norms inside f and g (Gemma-3 normalises each branch's output: RMSNorm(0) = 0). `residual_outputs` names the
   last projections of f and g; zeroing them (weights and biases, or bare parameters such as fused expert
   tensors) makes f and g return exact zeros, so a copied layer is an exact identity (paper §3.2). Names a
   layer lacks are skipped (the dense layers of a mixture-of-experts model), but every layer must zero at
   least one attention and one MLP output. Routers are left as they are: with every expert's output zero, the
   routing weights multiply zeros.
3. **Layer-indexed config fields.** Fields that say something per layer (`LAYER_FIELDS`: `layer_types`,
   `no_rope_layers`, `max_window_layers`, `mlp_only_layers` with `decoder_sparse_step`) are shifted by the
   merged (lam = 1) config so that every original layer keeps its own settings and the adapter layers take
   the bottom layer's. A family with a new such field adds its shift to `adapter.merged_model_config`.
4. **Router losses.** An MoE family's auxiliary router loss is never added to flexrealign's losses: InRa runs
   `model.model` and `lm_head` itself, and TrRa computes its loss from logits (Eq. 6). The adapter's router
   trains through the task loss alone; load balancing is a pretraining concern for a layer that starts as an
   identity and sees only the adapter's data.
5. **Tiny config.** `tiny` holds config overrides that make `tiny.tiny_model(model_type)` exercise the
   family's quirks (biases, qk-norm, sliding windows, layer patterns, experts) at test size.
6. **vLLM.** `vllm_class` is the InRa class the plugin registers for `architecture`, or None where the
   plugin does not serve the family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ATTN_OUT = "self_attn.o_proj"
MLP_OUT = "mlp.down_proj"


@dataclass(frozen=True)
class Family:
    """What flexrealign knows about one decoder architecture (see the module docstring for the contract)."""

    model_type: str = field(metadata={"help": "config.json's model_type."})
    architecture: str = field(
        metadata={"help": "The Hugging Face causal-LM class (config.json's architectures)."}
    )
    residual_outputs: tuple[str, ...] = field(
        default=(ATTN_OUT, MLP_OUT),
        metadata={"help": "Modules or parameters of a decoder layer whose zeroing makes it an identity."},
    )
    tiny: dict = field(default_factory=dict, metadata={"help": "Config overrides of the tiny test model."})
    vllm_class: str | None = field(default=None, metadata={"help": "The vLLM plugin's InRa class, if any."})


_ENTRIES = (
    Family("llama", "LlamaForCausalLM", vllm_class="InRaLlamaForCausalLM"),
    # q/k/v carry biases
    Family("qwen2", "Qwen2ForCausalLM", vllm_class="InRaQwen2ForCausalLM"),
    # q/k norms, explicit head_dim
    Family("qwen3", "Qwen3ForCausalLM", tiny={"head_dim": 16}, vllm_class="InRaQwen3ForCausalLM"),
    # sliding-window attention
    Family("mistral", "MistralForCausalLM", tiny={"sliding_window": 8}, vllm_class="InRaMistralForCausalLM"),
    # Qwen3-30B-A3B and successors: experts fused into 3-D tensors; the tiny model has a sparse bottom layer
    # (so the adapter is an MoE layer) and a dense layer 1 (so `mlp_only_layers` must shift).
    Family(
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        residual_outputs=(ATTN_OUT, MLP_OUT, "mlp.experts.down_proj"),  # no shared expert in this family
        tiny={
            "head_dim": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "mlp_only_layers": [1],
            "norm_topk_prob": True,
        },
        vllm_class="InRaQwen3MoeForCausalLM",
    ),
    # Gemma-3's text model: norms after each branch, scaled embeddings, a sliding/global layer pattern with
    # its own rotary table per layer type, soft-capped logits off.
    Family(
        "gemma3_text",
        "Gemma3ForCausalLM",
        tiny={
            "head_dim": 16,
            "sliding_window": 8,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        vllm_class="InRaGemma3ForCausalLM",
    ),
    # gpt-oss: attention sinks, alternating sliding windows, biased experts fused into 3-D tensors.
    Family(
        "gpt_oss",
        "GptOssForCausalLM",
        residual_outputs=(ATTN_OUT, "mlp.experts.down_proj", "mlp.experts.down_proj_bias"),
        tiny={
            "head_dim": 16,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 8,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 16,
                "rope_theta": 150000.0,
            },
        },
        vllm_class="InRaGptOssForCausalLM",
    ),
    # SmolLM3: every fourth layer has no rotary embedding (NoPE); the tiny model's layer 1 has none.
    Family(
        "smollm3", "SmolLM3ForCausalLM", tiny={"no_rope_layers": [1, 0]}, vllm_class="InRaSmolLM3ForCausalLM"
    ),
)

FAMILIES: dict[str, Family] = {f.model_type: f for f in _ENTRIES}
# base architecture (config.json "architectures") -> the InRa class the vLLM plugin registers for it
VLLM_CLASSES: dict[str, str] = {f.architecture: f.vllm_class for f in _ENTRIES if f.vllm_class}


def family_of(model_type: str | None, what: str = "model") -> Family:
    """The table entry of `model_type`.

    Args:
        model_type: config.json's `model_type`.
        what: how to name the model in the error (its class, usually).

    Returns:
        The family's entry.

    Raises:
        ValueError: `model_type` is not in the table; the message lists the supported ones.
    """
    if model_type not in FAMILIES:
        raise ValueError(
            f"InRa supports the decoder families {', '.join(FAMILIES)}; got {what} with model_type="
            f"{model_type!r}. A new family is an entry in flexrealign.core.families (its docstring has the contract)."
        )
    return FAMILIES[model_type]

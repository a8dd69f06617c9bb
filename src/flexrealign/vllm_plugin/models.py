"""InRa model classes for vLLM, built on vLLM's own Qwen2 / Qwen3 / Llama / Mistral classes (subclassed).

    aligned path   self.model      vLLM's stock model over all L + n checkpoint layers (adapter first)
    reference path self.ref_model  the same class over the L original layers, sharing their weights

`self.model` is exactly what plain vLLM would build for the checkpoint (the lam = 1 model), so weights load
through vLLM's stock loader. `self.ref_model` owns no weight: its layers hold the original layers'
projections, norms and rotary embeddings, and only their `Attention` modules are new. Each of those is a
layer of its own in vLLM's eyes, so the engine gives the reference path its own paged KV cache with no
patching. The adapter layers run once per token (aligned path only).

`forward` returns both paths' final hidden states side by side, (N, 2D), so vLLM's row selection for
sampling keeps them together; `compute_logits` maps them to [aligned | ref] logits, (M, 2V), which
`InRaLogitsProcessor` fuses with each request's lam.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.mistral import MistralForCausalLM, MistralModel
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM, Qwen2Model
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM, Qwen3Model
from vllm.model_executor.models.utils import extract_layer_index, maybe_prefix
from vllm.sequence import IntermediateTensors

from flexrealign.adapter import base_model_config
from flexrealign.vllm_plugin.config import check_engine_config, select_inra_architecture

LayerFactory = Callable[..., nn.Module]


# --------------------------------------------------------------------------------------- weight sharing
def share_weights(ref: nn.Module, src: nn.Module) -> None:
    """Make `ref` use `src`'s submodules and tensors everywhere except in its attention (KV cache) layers.

    `ref` and `src` are two instances of one decoder-layer class; after this call `ref` computes the same
    function as `src` but reads and writes its own KV cache.
    """
    for name, child in list(ref.named_children()):
        if isinstance(child, AttentionLayerBase):
            continue  # the reference path's own KV cache
        if any(isinstance(m, AttentionLayerBase) for m in child.modules()):
            share_weights(child, getattr(src, name))
        else:
            setattr(ref, name, getattr(src, name))
    for name in list(ref._parameters):
        ref._parameters[name] = src._parameters[name]
    for name in list(ref._buffers):
        ref._buffers[name] = src._buffers[name]


def shared_layer_factory(aligned_layers: nn.ModuleList, n: int) -> LayerFactory:
    """A decoder-layer constructor for the reference model: build layer j, then share layer n + j's weights.

    Sharing right after each layer is built keeps the extra memory at load time to one layer (and the
    embedding the stock constructor builds, until it is replaced by the shared one).
    """

    def make(**kwargs: Any) -> nn.Module:
        j = extract_layer_index(kwargs["prefix"])
        src = aligned_layers[n + j]
        layer = type(src)(**kwargs)
        share_weights(layer, src)
        return layer

    return make


def base_vllm_config(vllm_config: VllmConfig, n: int) -> VllmConfig:
    """A shallow copy of `vllm_config` whose HF config describes the L original layers only."""
    base_cfg, found = base_model_config(vllm_config.model_config.hf_config)
    if found != n:
        raise ValueError(f"InRa: the text config has {found} adapter layers, the model expects {n}")
    model_config = copy.copy(vllm_config.model_config)
    object.__setattr__(model_config, "hf_config", base_cfg)
    object.__setattr__(model_config, "hf_text_config", base_cfg.get_text_config())
    ref_config = copy.copy(vllm_config)
    object.__setattr__(ref_config, "model_config", model_config)
    return ref_config


def check_shared(ref_model: nn.Module, model: nn.Module) -> None:
    """Every parameter of the reference model must be one of the aligned model's (no silent copies)."""
    owned = {id(p) for p in model.parameters()}
    extra = [name for name, p in ref_model.named_parameters() if id(p) not in owned]
    if extra:
        raise RuntimeError(
            f"InRa: reference-path parameters not shared with the checkpoint's layers: {extra[:5]}"
        )


# -------------------------------------------------------------------------------------- the causal LM
class InRaCausalLMMixin(nn.Module):
    """Adds the reference path to a vLLM causal LM whose `self.model` holds the L + n checkpoint layers."""

    ref_model_cls: ClassVar[type[nn.Module]]

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        check_engine_config(vllm_config)
        hf_config = vllm_config.model_config.hf_config
        if select_inra_architecture(hf_config) is None:  # also validates the entry
            raise ValueError(
                f"{type(self).__name__} serves InRa checkpoints; config.json has no 'inra' entry"
            )
        n = int(hf_config.inra["adapter_layers"])
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.inra_adapter_layers = n
        self.ref_model = self.ref_model_cls(
            vllm_config=base_vllm_config(vllm_config, n),
            prefix=maybe_prefix(prefix, "ref_model"),
            layer_factory=shared_layer_factory(self.model.layers, n),
        )
        # The stock constructor built its own embedding and final norm: share the checkpoint's instead.
        self.ref_model.embed_tokens = self.model.embed_tokens
        self.ref_model.norm = self.model.norm
        check_shared(self.ref_model, self.model)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        aligned = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)
        ref = self.ref_model(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)
        return torch.cat([aligned, ref], dim=-1)  # (N, 2D)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """(M, 2D) hidden states -> (M, 2V) logits [aligned | ref], through one lm_head call."""
        aligned, ref = hidden_states.chunk(2, dim=-1)  # (M, D) each
        logits = self.logits_processor(self.lm_head, torch.cat([aligned, ref]))  # (2M, V)
        if logits is None:
            return None  # a tensor-parallel rank that does not sample
        aligned_logits, ref_logits = logits.chunk(2)  # (M, V) each
        return torch.cat([aligned_logits, ref_logits], dim=-1)  # (M, 2V)


# -------------------------------------------------------------------------- reference models, per family
# Each defines its own `forward` (same body as the parent's): vLLM compiles a model per code object of
# `forward`, so the reference model must not share the aligned model's.
class InRaRefQwen2Model(Qwen2Model):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str, layer_factory: LayerFactory) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, decoder_layer_type=layer_factory)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefQwen3Model(Qwen3Model):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str, layer_factory: LayerFactory) -> None:
        self.decoder_layer_type = layer_factory  # read by Qwen3Model.__init__ in place of the class default
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefLlamaModel(LlamaModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str, layer_factory: LayerFactory) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=layer_factory)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefMistralModel(MistralModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str, layer_factory: LayerFactory) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=layer_factory)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaQwen2ForCausalLM(InRaCausalLMMixin, Qwen2ForCausalLM):
    ref_model_cls = InRaRefQwen2Model


class InRaQwen3ForCausalLM(InRaCausalLMMixin, Qwen3ForCausalLM):
    ref_model_cls = InRaRefQwen3Model


class InRaLlamaForCausalLM(InRaCausalLMMixin, LlamaForCausalLM):
    ref_model_cls = InRaRefLlamaModel


class InRaMistralForCausalLM(InRaCausalLMMixin, MistralForCausalLM):
    ref_model_cls = InRaRefMistralModel

"""InRa model classes for vLLM, built on vLLM's own Qwen2 / Qwen3 / Llama / Mistral classes (subclassed).

    aligned path   self.model      vLLM's stock model over all L + n checkpoint layers (adapter first)
    reference path self.ref_model  the same class over the L original layers, sharing their weights

`self.model` is exactly what plain vLLM would build for the checkpoint (the lam = 1 model), so weights load
through vLLM's stock loader. `self.ref_model` owns no weight: its layers hold the original layers'
projections, norms and rotary embeddings, and only their `Attention` modules are new. Each of those is a
layer of its own in vLLM's eyes, so the engine gives the reference path its own paged KV cache with no
patching.

One step, when the live batch needs both paths (N scheduled tokens, hidden size D):

    x = embed(ids)                                      (N, D)
    h = adapter layers(x)                               (N, D)   aligned stream only, once per token
    [h ; x] through each original layer, stacked        (2N, D)  one call per projection (qkv, o, gate_up,
                                                                 down) reads each weight once for both
                                                                 streams; attention runs per path, rows
                                                                 [:N] with the aligned layer's Attention
                                                                 (its KV cache), rows [N:] with the ref's
    final norm, split and put side by side              (N, 2D)

The stacked layers are the stock decoder layers, run on 2N rows: only the `Attention` call is swapped for
`PathSplitAttention`, so the family's own attention code (qk-norm, rotary, biases) is reused unchanged.
When no live request needs one of the paths (every lam 1, or every lam 0; `logits.live_paths`), the step
runs the other path alone through its stock model, and that path's output fills both halves.

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
from flexrealign.fusion import ALIGNED
from flexrealign.vllm_plugin.config import check_engine_config, path_salt_installed, select_inra_architecture
from flexrealign.vllm_plugin.logits import BOTH_PATHS, live_paths

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


# ------------------------------------------------------------------------------------ stacked streams
class PathSplitAttention(nn.Module):
    """Attention over 2N stacked rows: rows [:N] through the aligned path's layer, [N:] through the ref's.

    Each call reads and writes that path's own KV cache; both see the step's attention metadata (the two
    streams hold the same tokens at the same positions).
    """

    def __init__(self, aligned: nn.Module, ref: nn.Module) -> None:
        super().__init__()
        self.aligned, self.ref = aligned, ref

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kw: Any) -> torch.Tensor:
        n = query.shape[0] // 2
        out_a = self.aligned(query[:n], key[:n], value[:n], **kw)  # (N, H * head_dim)
        out_r = self.ref(query[n:], key[n:], value[n:], **kw)  # (N, H * head_dim)
        return torch.cat([out_a, out_r])  # (2N, H * head_dim)


def _shallow_copy(module: nn.Module, **children: nn.Module) -> nn.Module:
    """`module` with some children replaced, sharing everything else (the original is left unchanged)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # copy.copy would share (and so edit) the original's dict
    for name, child in children.items():
        clone._modules[name] = child
    return clone


def stacked_layer(aligned_layer: nn.Module, ref_layer: nn.Module) -> nn.Module:
    """The aligned decoder layer, run on [aligned ; ref] stacked rows, with attention split per path."""
    attn = PathSplitAttention(aligned_layer.self_attn.attn, ref_layer.self_attn.attn)
    return _shallow_copy(aligned_layer, self_attn=_shallow_copy(aligned_layer.self_attn, attn=attn))


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
        # Skipping a path leaves holes in its KV cache; with prefix caching that is safe only while cached
        # blocks are kept apart by the paths their requests use (config.salt_prefix_cache_by_paths).
        self.inra_skip_paths = not vllm_config.cache_config.enable_prefix_caching or path_salt_installed()
        self.inra_step_paths: frozenset[str] = BOTH_PATHS  # the paths the last forward ran
        self._stacked: list[nn.Module] | None = None  # built after loading; outside the module tree

    def stacked_layers(self) -> list[nn.Module]:
        """The original layers as stacked two-stream layers (views of the loaded modules, no new weights)."""
        if self._stacked is None:
            n = self.inra_adapter_layers
            pairs = zip(self.model.layers[n:], self.ref_model.layers, strict=True)
            self._stacked = [stacked_layer(aligned, ref) for aligned, ref in pairs]
        return self._stacked

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        paths = live_paths() if self.inra_skip_paths else BOTH_PATHS
        self.inra_step_paths = paths
        if paths == BOTH_PATHS:
            return self.forward_both(input_ids, positions, inputs_embeds)  # (N, 2D)
        model = self.model if ALIGNED in paths else self.ref_model
        hidden = model(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)
        return torch.cat([hidden, hidden], dim=-1)  # (N, 2D): the unused half is never read by fusion

    def forward_both(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """Both paths, each original weight read once per step (see the module docstring)."""
        x = self.model.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds  # (N, D)
        hidden, residual = x, None
        for layer in self.model.layers[: self.inra_adapter_layers]:
            hidden, residual = layer(positions, hidden, residual)  # (N, D) each
        # The ref stream enters layer 0 with no residual yet; a zero residual is the same (x + 0 = x).
        hidden = torch.cat([hidden, x])  # (2N, D)
        residual = torch.cat([residual, torch.zeros_like(x)])  # (2N, D)
        positions = torch.cat([positions, positions], dim=-1)  # (2N,)
        for layer in self.stacked_layers():
            hidden, residual = layer(positions, hidden, residual)  # (2N, D) each
        hidden, _ = self.model.norm(hidden, residual)  # (2N, D)
        return torch.cat(hidden.chunk(2), dim=-1)  # (N, 2D) [aligned | ref]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """(M, 2D) hidden states -> (M, 2V) logits [aligned | ref], through one lm_head call.

        After a single-path step both halves hold that path's logits, computed once.
        """
        if self.inra_step_paths != BOTH_PATHS:
            logits = self.logits_processor(self.lm_head, hidden_states[:, : hidden_states.shape[1] // 2])
            return None if logits is None else torch.cat([logits, logits], dim=-1)  # (M, 2V)
        # (M, 2D) viewed as (2M, D) holds rows aligned_0, ref_0, aligned_1, ...: one lm_head call, and its
        # (2M, V) output viewed as (M, 2V) is [aligned | ref] per row, with no copy either way.
        rows = hidden_states.reshape(2 * hidden_states.shape[0], -1)  # (2M, D)
        logits = self.logits_processor(self.lm_head, rows)  # (2M, V)
        if logits is None:
            return None  # a tensor-parallel rank that does not sample
        return logits.reshape(hidden_states.shape[0], -1)  # (M, 2V) [aligned | ref]


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

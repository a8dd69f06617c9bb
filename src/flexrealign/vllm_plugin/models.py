"""InRa model classes for vLLM, built on vLLM's own model classes (subclassed), one per family of
`flexrealign.core.families` that names a `vllm_class`.

    aligned path   self.model      vLLM's stock model over all L + n checkpoint layers (adapter first)
    reference path self.ref_model  the same class over the L original layers, sharing their weights

`self.model` is what plain vLLM would build for the checkpoint (the lam = 1 model; gpt-oss and SmolLM3 get
the layer fixes of `family_layers.py`), so weights load through vLLM's stock loader. `self.ref_model` owns
no weight: its layers hold the original layers' projections, norms, experts and rotary embeddings, and only
their attention modules are new (`sharing.py`; every family's layers are built through the same hook). Each
of those is a layer of its own in vLLM's eyes, so the engine gives the reference path its own paged KV cache
with no patching.

One step, when the live batch needs both paths (N scheduled tokens, hidden size D):

    x = embed(ids)                                      (N, D)
    h = adapter layers(x)                               (N, D)   aligned stream only, once per token
    [h ; x] through each original layer, stacked        (2N, D)  one call per projection (qkv, o, gate_up,
                                                                 down, experts) reads each weight once
                                                                 for both streams; attention runs per
                                                                 path, rows [:N] with the aligned layer's
                                                                 attention (its KV cache), rows [N:] with
                                                                 the ref's
    final norm, split and put side by side              (N, 2D)

The stacked layers are the stock decoder layers, run on 2N rows: only the attention call is swapped for
`PathSplitAttention`, so the family's own attention code (qk-norm, rotary, biases, sinks) is reused
unchanged. Everything else in a layer treats rows independently (a mixture-of-experts layer routes each row
on its own, with no capacity limit), so the stacked rows give what each path gives alone.
When no live request needs one of the paths (every lam 1, or every lam 0; `logits.live_paths(vllm_config)`), the step
runs the other path alone through its stock model, and that path's output fills both halves.

`forward` returns both paths' final hidden states side by side, (N, 2D), so vLLM's row selection for
sampling keeps them together; `compute_logits` maps them to [aligned | ref] logits, (M, 2V), which
`InRaLogitsProcessor` fuses with each request's lam.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.model_executor.models.gemma3 import Gemma3ForCausalLM, Gemma3Model
from vllm.model_executor.models.gpt_oss import GptOssForCausalLM, GptOssModel
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.mistral import MistralForCausalLM, MistralModel
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM, Qwen2Model
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM, Qwen3Model
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM, Qwen3MoeModel
from vllm.model_executor.models.utils import extract_layer_index, maybe_prefix
from vllm.sequence import IntermediateTensors

from flexrealign.core.fusion import ALIGNED
from flexrealign.vllm_plugin.config import check_engine_config, path_salt_installed, select_inra_architecture
from flexrealign.vllm_plugin.family_layers import gpt_oss_layer, smollm3_layer
from flexrealign.vllm_plugin.logits import BOTH_PATHS, linked_processor, live_paths
from flexrealign.vllm_plugin.sharing import (
    LayerBuilder,
    LayerFn,
    base_vllm_config,
    check_shared,
    layers_built_by,
    share_layer,
    share_outside_layers,
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


def attention_path(layer: nn.Module) -> str:
    """Where a decoder layer keeps its attention (KV cache) module: "self_attn.attn", or gpt-oss's "attn.attn"."""
    paths = [name for name, m in layer.named_modules() if isinstance(m, AttentionLayerBase)]
    if len(paths) != 1:
        raise RuntimeError(f"InRa: a decoder layer with one attention module expected, found {paths}")
    return paths[0]


def _with_submodule(module: nn.Module, path: list[str], new: nn.Module) -> nn.Module:
    """Shallow copies of `module` and of its submodules along `path`, the last of them replaced by `new`."""
    child = new if len(path) == 1 else _with_submodule(getattr(module, path[0]), path[1:], new)
    return _shallow_copy(module, **{path[0]: child})


def stacked_layer(aligned_layer: nn.Module, ref_layer: nn.Module) -> nn.Module:
    """The aligned decoder layer, run on [aligned ; ref] stacked rows, with attention split per path."""
    path = attention_path(aligned_layer)
    attn = PathSplitAttention(aligned_layer.get_submodule(path), ref_layer.get_submodule(path))
    return _with_submodule(aligned_layer, path.split("."), attn)


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
        # Both paths' layers come from `inra_layer`. The reference model's class subclasses the stock model
        # class the aligned model is, so its MRO names the modules that build the layers of both.
        with layers_built_by(self.ref_model_cls, lambda stock, p: self.inra_layer(vllm_config, stock, p)):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.inra_adapter_layers = n
        ref_config = base_vllm_config(vllm_config, n)
        with layers_built_by(self.ref_model_cls, self._ref_layer_builder(ref_config, n)):
            self.ref_model = self.ref_model_cls(
                vllm_config=ref_config, prefix=maybe_prefix(prefix, "ref_model")
            )
        # The stock constructor built its own embedding and final norm: share the checkpoint's instead.
        share_outside_layers(self.ref_model, self.model)
        check_shared(self.ref_model, self.model)
        # Skipping a path leaves holes in its KV cache; with prefix caching that is safe only while cached
        # blocks are kept apart by the paths their requests use (config.salt_prefix_cache_by_paths).
        self.inra_skip_paths = not vllm_config.cache_config.enable_prefix_caching or path_salt_installed()
        self.inra_vllm_config = vllm_config  # live_paths reads the batch of this engine's processor
        self.inra_step_paths: frozenset[str] = BOTH_PATHS  # the paths the last forward ran
        self.inra_probe = load_probe(vllm_config)  # lam auto's (weights (D,), bias), or None
        self._stacked: list[nn.Module] | None = None  # built after loading; outside the module tree

    def inra_layer(self, vllm_config: VllmConfig, stock: LayerFn, prefix: str) -> nn.Module:
        """Decoder layer `prefix` of either path, built under `vllm_config` (the merged or the base config);
        the families whose stock layers need a fix override this (`family_layers.py`)."""
        return stock(prefix=prefix)

    def _ref_layer_builder(self, ref_config: VllmConfig, n: int) -> LayerBuilder:
        """Builds reference layer j and shares aligned layer n + j's weights with it, one layer at a time,
        so the extra memory at load time is one layer (and the stock embedding, until it is replaced)."""

        def build(stock: LayerFn, prefix: str) -> nn.Module:
            src = self.model.layers[n + extract_layer_index(prefix)]
            return share_layer(self.inra_layer(ref_config, stock, prefix), src, prefix)

        return build

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
        paths = live_paths(self.inra_vllm_config) if self.inra_skip_paths else BOTH_PATHS
        self.inra_step_paths = paths
        if paths == BOTH_PATHS:
            return self.forward_both(input_ids, positions, inputs_embeds)  # (N, 2D)
        model = self.model if ALIGNED in paths else self.ref_model
        hidden = model(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)
        return torch.cat([hidden, hidden], dim=-1)  # (N, 2D): the unused half is never read by fusion

    def forward_both(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """Both paths, each original weight read once per step (see the module docstring).

        Layers are called by keyword: gpt-oss's take (hidden_states, positions, residual), the others'
        (positions, hidden_states, residual). Every family's layer and final norm take the residual stream
        apart from the branch output, (hidden, residual) -> (branch, residual), as vLLM's fused add-norms do.
        """
        x = self.model.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds  # (N, D)
        hidden, residual = x, None
        for layer in self.model.layers[: self.inra_adapter_layers]:
            hidden, residual = layer(positions=positions, hidden_states=hidden, residual=residual)  # (N, D)
        # The ref stream enters layer 0 with no residual yet; a zero residual is the same (x + 0 = x).
        hidden = torch.cat([hidden, x])  # (2N, D)
        residual = torch.cat([residual, torch.zeros_like(x)])  # (2N, D)
        positions = torch.cat([positions, positions], dim=-1)  # (2N,)
        for layer in self.stacked_layers():
            hidden, residual = layer(positions=positions, hidden_states=hidden, residual=residual)  # (2N, D)
        hidden, _ = self.model.norm(hidden, residual)  # (2N, D)
        return torch.cat(hidden.chunk(2), dim=-1)  # (N, 2D) [aligned | ref]

    def _probe(self, hidden_states: torch.Tensor) -> None:
        """lam auto's probe (`flexrealign.decoding.adaptive`): its logit w . h + b on the reference path's final
        hidden state of each row, handed to the processor while a request waits for its choice. Such a
        request needs both paths, so the reference half is the reference path's."""
        proc = linked_processor(self.inra_vllm_config)
        if self.inra_probe is None or proc is None or not proc.wants_probe:
            return
        w, b = self.inra_probe
        ref = hidden_states[:, hidden_states.shape[1] // 2 :].float()  # (M, D)
        proc.probe_logit = ref @ w.to(ref.device) + b  # (M,)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """(M, 2D) hidden states -> (M, 2V) logits [aligned | ref], through one lm_head call.

        After a single-path step both halves hold that path's logits, computed once.
        """
        self._probe(hidden_states)
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
# Stock model classes. Each defines its own `forward` (same body as the parent's): vLLM compiles a model per
# code object of `forward`, so the reference model must not share the aligned model's.
class InRaRefQwen2Model(Qwen2Model):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefQwen3Model(Qwen3Model):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefQwen3MoeModel(Qwen3MoeModel):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefLlamaModel(LlamaModel):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefMistralModel(MistralModel):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefGemma3Model(Gemma3Model):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefGptOssModel(GptOssModel):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


class InRaRefSmolLM3Model(LlamaModel):
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)  # (N, D)


# ----------------------------------------------------------------------------- the InRa classes, per family
class InRaQwen2ForCausalLM(InRaCausalLMMixin, Qwen2ForCausalLM):
    ref_model_cls = InRaRefQwen2Model


class InRaQwen3ForCausalLM(InRaCausalLMMixin, Qwen3ForCausalLM):
    ref_model_cls = InRaRefQwen3Model


class InRaQwen3MoeForCausalLM(InRaCausalLMMixin, Qwen3MoeForCausalLM):
    ref_model_cls = InRaRefQwen3MoeModel


class InRaLlamaForCausalLM(InRaCausalLMMixin, LlamaForCausalLM):
    ref_model_cls = InRaRefLlamaModel


class InRaMistralForCausalLM(InRaCausalLMMixin, MistralForCausalLM):
    ref_model_cls = InRaRefMistralModel


class InRaGemma3ForCausalLM(InRaCausalLMMixin, Gemma3ForCausalLM):
    ref_model_cls = InRaRefGemma3Model


class InRaGptOssForCausalLM(InRaCausalLMMixin, GptOssForCausalLM):
    ref_model_cls = InRaRefGptOssModel

    def inra_layer(self, vllm_config: VllmConfig, stock: LayerFn, prefix: str) -> nn.Module:
        return gpt_oss_layer(vllm_config, stock, prefix)


class InRaSmolLM3ForCausalLM(InRaCausalLMMixin, LlamaForCausalLM):
    """SmolLM3 on vLLM's Llama classes (same weight names), NoPE layers without rotary (`family_layers`)."""

    ref_model_cls = InRaRefSmolLM3Model

    def inra_layer(self, vllm_config: VllmConfig, stock: LayerFn, prefix: str) -> nn.Module:
        return smollm3_layer(vllm_config, stock, prefix)


def load_probe(vllm_config: VllmConfig) -> tuple[torch.Tensor, float] | None:
    """lam auto's probe from the checkpoint's calibration (None without one), checked against the model.

    Raises:
        ValueError: a probe fitted on another hidden size (a calibration copied from another checkpoint).
    """
    from flexrealign.decoding.calibration import load_calibration

    cal = load_calibration(getattr(vllm_config.model_config, "model", None))
    if cal is None or cal.auto is None:
        return None
    size = vllm_config.model_config.hf_config.get_text_config().hidden_size
    if len(cal.auto.weights) != size:
        raise ValueError(f"the auto policy was fitted on a hidden size of {len(cal.auto.weights)}; this model's "
                         f"is {size}: rerun flexrealign calibrate on this checkpoint")  # fmt: skip
    return torch.tensor(cal.auto.weights, dtype=torch.float32), cal.auto.bias

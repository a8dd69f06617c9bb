"""How the reference model's decoder layers come to share the checkpoint's weights, for every family alike.

vLLM's model classes build their decoder stacks with `make_layers(num_layers, layer_fn, prefix)`, a name each
model module imports from `vllm.model_executor.models.utils`. `layers_built_by` swaps that name, in the
modules whose constructors a model class runs, for the time one model is built, so that each layer comes from
a builder of ours that is handed the stock `layer_fn`. No family needs a layer-class parameter for this
(Gemma-3's and gpt-oss's models have none).

The reference model's builder (`share_layer`) builds the stock layer j, then hands it the aligned layer
n + j's submodules and tensors everywhere except in its attention (KV cache) module, so its extra memory at
load time is one layer. What vLLM learnt about the discarded submodules is undone at once:

* attention modules hold some tensors outside the module tree (gpt-oss's attention sinks live in the
  attention backend's `impl`): they are pointed at the shared tensors (`rebind_attention`);
* layers that register themselves by name for custom ops (a `FusedMoE` runner in the compilation config's
  `static_forward_context` and `static_all_moe_layers`) are unregistered, so they are freed and no name
  lookup reaches them (`drop_orphan_registrations`). The shared ones keep their aligned-model names, which
  is right: the reference path runs those very modules.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import torch
from torch import nn
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.model_executor.models import utils as vllm_utils

from flexrealign.core.adapter import base_model_config

# A stock layer constructor, as vLLM models hand it to make_layers: layer_fn(prefix=...) -> layer.
LayerFn = Callable[..., nn.Module]
# Our layer builder: (the stock layer_fn, the layer's prefix) -> the layer.
LayerBuilder = Callable[[LayerFn, str], nn.Module]


# ------------------------------------------------------------------------------------- building layers
def _layer_modules(model_cls: type) -> list[ModuleType]:
    """The modules, along `model_cls`'s MRO, whose code calls vLLM's `make_layers` by its global name."""
    modules = dict.fromkeys(sys.modules.get(cls.__module__) for cls in model_cls.__mro__)
    return [m for m in modules if m is not None and getattr(m, "make_layers", None) is vllm_utils.make_layers]


@contextmanager
def layers_built_by(model_cls: type, build: LayerBuilder) -> Iterator[None]:
    """While a `model_cls` (a stock vLLM model class or a subclass) is built, its layer `prefix` is
    `build(stock_layer_fn, prefix)`."""
    modules = _layer_modules(model_cls)
    if not modules:
        raise RuntimeError(
            f"InRa: {model_cls.__name__}'s modules do not build layers with vLLM's make_layers"
        )
    stock = vllm_utils.make_layers

    def make_layers(num_hidden_layers: int, layer_fn: LayerFn, prefix: str) -> tuple:
        return stock(num_hidden_layers, lambda prefix: build(layer_fn, prefix), prefix)

    for module in modules:
        module.make_layers = make_layers
    try:
        yield
    finally:
        for module in modules:
            module.make_layers = stock


# ------------------------------------------------------------------------------------- sharing weights
def share_weights(ref: nn.Module, src: nn.Module) -> dict[int, object]:
    """Make `ref` use `src`'s submodules and tensors everywhere except in its attention (KV cache) layers.

    `ref` and `src` are two instances of one module class; after this call `ref` computes the same function
    as `src` but reads and writes its own KV cache. Returns id(replaced object) -> its replacement, for the
    references to replaced tensors that the kept attention modules hold outside the module tree.
    """
    replaced: dict[int, object] = {}
    for name, child in list(ref.named_children()):
        if isinstance(child, AttentionLayerBase):
            continue  # the reference path's own KV cache
        if any(isinstance(m, AttentionLayerBase) for m in child.modules()):
            replaced.update(share_weights(child, getattr(src, name)))
        else:
            replaced.update(_pairs(child, getattr(src, name)))
            setattr(ref, name, getattr(src, name))
    for store, src_store in ((ref._parameters, src._parameters), (ref._buffers, src._buffers)):
        for name in list(store):
            replaced[id(store[name])] = src_store[name]
            store[name] = src_store[name]
    return replaced


def _named(module: nn.Module) -> dict[str, object]:
    """Every submodule (itself as ""), parameter and buffer of `module`, by name."""
    out: dict[str, object] = dict(module.named_modules(remove_duplicate=False))
    out.update(module.named_parameters(remove_duplicate=False))
    out.update(module.named_buffers(remove_duplicate=False))
    return out


def _pairs(ref: nn.Module, src: nn.Module) -> dict[int, object]:
    """id(submodule or tensor of `ref`) -> the same-named one of `src`."""
    theirs = _named(src)
    return {id(obj): theirs[name] for name, obj in _named(ref).items() if name in theirs}


def rebind_attention(layer: nn.Module, replaced: dict[int, object]) -> None:
    """Point the attention modules of `layer` (and their backends' `impl`) at the shared tensors.

    vLLM's `Attention` passes some of its parent's tensors to its backend (gpt-oss's `sinks`); after
    `share_weights` those would be the discarded, never-loaded copies.
    """
    for module in layer.modules():
        if not isinstance(module, AttentionLayerBase):
            continue
        for obj in (module, getattr(module, "impl", None)):
            attrs = getattr(obj, "__dict__", {})
            for name, value in list(attrs.items()):
                if isinstance(value, (torch.Tensor, nn.Module)) and id(value) in replaced:
                    attrs[name] = replaced[id(value)]


def drop_orphan_registrations(layer: nn.Module, prefix: str) -> None:
    """Unregister the layers vLLM registered by name under `prefix` that `layer` no longer holds.

    A `FusedMoE` runner registers itself in the compilation config for its custom op; the reference layer's
    own runner, replaced by the aligned one, would otherwise stay alive (with its expert weights) and be
    reachable by name.
    """
    compilation = get_current_vllm_config().compilation_config
    held = {id(m) for m in layer.modules()}
    context = compilation.static_forward_context
    stale = {name for name, obj in context.items() if name.startswith(f"{prefix}.") and id(obj) not in held}
    for name in stale:
        del context[name]
    compilation.static_all_moe_layers[:] = [n for n in compilation.static_all_moe_layers if n not in stale]


def share_layer(layer: nn.Module, src: nn.Module, prefix: str) -> nn.Module:
    """Reference layer `layer` (named `prefix`), sharing everything but its KV cache with aligned `src`."""
    if type(layer) is not type(src):
        raise RuntimeError(
            f"InRa: {prefix} is a {type(layer).__name__}, its aligned layer a {type(src).__name__}"
        )
    rebind_attention(layer, share_weights(layer, src))
    drop_orphan_registrations(layer, prefix)
    return layer


def share_outside_layers(ref_model: nn.Module, model: nn.Module) -> None:
    """The reference model takes the aligned model's embedding, final norm and buffers (everything but its
    decoder layers), in place of those its stock constructor built."""
    for name, _ in list(ref_model.named_children()):
        if name != "layers":
            setattr(ref_model, name, getattr(model, name))
    for name in list(ref_model._buffers):
        ref_model._buffers[name] = model._buffers[name]


def check_shared(ref_model: nn.Module, model: nn.Module) -> None:
    """Every parameter of the reference model must be one of the aligned model's (no silent copies)."""
    owned = {id(p) for p in model.parameters()}
    extra = [name for name, p in ref_model.named_parameters() if id(p) not in owned]
    if extra:
        raise RuntimeError(
            f"InRa: reference-path parameters not shared with the checkpoint's layers: {extra[:5]}"
        )


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

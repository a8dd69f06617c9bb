"""What the stock vLLM decoder layers of two families need to serve InRa checkpoints as Hugging Face does.

* gpt-oss: vLLM's `OAIAttention` slides its window on even layer indexes, Hugging Face on the layers that
  `config.layer_types` calls sliding. The two agree on a stock checkpoint, but an InRa checkpoint puts n
  copies of layer 0 first, which shifts the pattern (n = 1: sliding, sliding, full, ...).
  `InRaGptOssBlock` reads `layer_types`, through the override point vLLM provides for the window policy.
* SmolLM3: vLLM 0.32 serves it through its generic Transformers backend, which cannot run two paths. Its
  weights and layers are Llama's but for NoPE layers (`config.no_rope_layers[i] == 0`: no rotary
  embedding), so `smollm3_layer` builds vLLM's Llama layer and gives those layers `NoRotary`.
  (Its sliding windows follow `use_sliding_window`: see `config.hf_sliding_rule`.)

Each builder has the `LayerBuilder` shape of `sharing.py` with the model's vLLM config in front, and serves
both paths: the aligned model's layers are numbered as in the merged (L + n) config, the reference model's
as in the base (L) config, and each reads its own config.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import CacheConfig, VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.models.gpt_oss import OAIAttention, TransformerBlock
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionType

from flexrealign.vllm_plugin.sharing import LayerFn


# --------------------------------------------------------------------------------------------- gpt-oss
class InRaOAIAttention(OAIAttention):
    """gpt-oss attention whose window follows `config.layer_types` (stock: even layer indexes slide)."""

    def _build_attention(
        self,
        config: object,
        cache_config: CacheConfig | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ) -> Attention:
        layer_types = getattr(config, "layer_types", None)
        if not layer_types:  # no per-layer pattern in the config: the stock rule is all there is
            return super()._build_attention(config, cache_config, quant_config, prefix)
        sliding = layer_types[self.layer_idx] == "sliding_attention"
        return Attention(
            self.num_local_attention_heads,
            self.head_dim,
            self.scaling,
            num_kv_heads=self.num_local_key_value_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            per_layer_sliding_window=config.sliding_window if sliding else None,
            attn_type=AttentionType.DECODER,
            prefix=f"{prefix}.attn",
            sinks=self.sinks,
        )


class InRaGptOssBlock(TransformerBlock):
    attention_cls = InRaOAIAttention


def gpt_oss_layer(vllm_config: VllmConfig, stock: LayerFn, prefix: str) -> nn.Module:
    """gpt-oss decoder layer `prefix`, built as the stock model does but with `InRaOAIAttention`."""
    return InRaGptOssBlock(vllm_config, prefix=prefix, quant_config=vllm_config.quant_config)


# --------------------------------------------------------------------------------------------- SmolLM3
class NoRotary(nn.Module):
    """A NoPE layer's stand-in for vLLM's rotary embedding: same call, query and key unchanged."""

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return query, key


def smollm3_layer(vllm_config: VllmConfig, stock: LayerFn, prefix: str) -> nn.Module:
    """SmolLM3 decoder layer `prefix`: vLLM's Llama layer, without rotary embedding where the config says so."""
    layer = stock(prefix=prefix)
    no_rope_layers = getattr(vllm_config.model_config.hf_config, "no_rope_layers", None)
    if no_rope_layers is not None and not no_rope_layers[extract_layer_index(prefix)]:
        layer.self_attn.rotary_emb = NoRotary()
    return layer

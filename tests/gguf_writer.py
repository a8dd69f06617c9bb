"""Write a Hugging Face model and its tokenizer as a GGUF file, the way llama.cpp's `convert_hf_to_gguf.py` does.

For the GGUF tests: a tiny model built in code goes through the same file layout a real llama.cpp conversion
produces, so the round trip GGUF -> `flexrealign.conversion.gguf_convert` -> Hugging Face can be compared with the model
that went in. What llama.cpp does per architecture, and what transformers' GGUF reader
(`transformers.modeling_gguf_pytorch_utils`) undoes on the way back:

* llama / smollm3: q and k rows are permuted (llama.cpp's `LlamaModel.permute`, for its rotary kernel); the
  reader's `LlamaTensorProcessor` reverses it. SmolLM3 is written exactly as Llama under its own arch name:
  which layers skip the rotary embedding is not in the file, llama.cpp hard-codes every fourth.
* qwen3 / qwen3moe: tensors as they are; the fused expert tensor `gate_up_proj` (E, 2I, H) is written as the
  stacked `ffn_gate_exps` / `ffn_up_exps` (E, I, H) that llama.cpp builds from the per-expert tensors.
* gemma3: every `*norm.weight` is stored as 1 + w (Gemma's RMSNorm scales by 1 + w; llama.cpp's by w).
* gpt-oss: `sinks` become `attn_sinks.weight`; the interleaved `gate_up_proj` (E, H, 2I) is transposed and
  split into gate (even columns) and up (odd columns), `down_proj` transposed, biases split the same way.

Tied embeddings are written once (no `output.weight`), as llama.cpp does. The tokenizer is written as
`_set_vocab_gpt2` writes a byte-level BPE tokenizer: tokens by id, types (added special tokens CONTROL, other
added tokens USER_DEFINED, `[PAD{i}]` UNUSED for ids without a token), merges, special ids, chat template.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from pathlib import Path

import gguf
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# config.model_type -> llama.cpp's architecture
GGUF_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE,
    "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
    "gpt_oss": gguf.MODEL_ARCH.GPT_OSS,
    "smollm3": gguf.MODEL_ARCH.SMOLLM3,
}
_PERMUTED_QK = (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.SMOLLM3)


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    float16: bool = False,
    arch: gguf.MODEL_ARCH | None = None,
    drop: Collection[str] = (),
) -> Path:
    """Write `model` (fp32, or f16 with `float16`) and `tokenizer` to the GGUF file `path`; returns the path.

    Args:
        arch: the llama.cpp architecture to write (default: the one llama.cpp uses for the model's type);
            another one writes the same tensors under that architecture's names and hyperparameters.
        drop: GGUF tensor names to leave out, for a damaged file.
    """
    config = model.config
    arch = GGUF_ARCH[config.model_type] if arch is None else arch
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(f"tiny-{config.model_type}")
    _hyperparameters(writer, config, arch, float16)
    _vocabulary(writer, tokenizer, config.vocab_size)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in _llama_cpp_tensors(model, arch):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"llama.cpp's {arch.name} has no tensor for {hf_name}")
        if name in drop:
            continue
        # llama.cpp keeps 1-D tensors (norms, biases, sinks) in f32 whatever the output type
        half = float16 and tensor.dim() > 1
        writer.add_tensor(name, tensor.to(torch.float16 if half else torch.float32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _hyperparameters(writer: gguf.GGUFWriter, config, arch: gguf.MODEL_ARCH, float16: bool) -> None:
    """The `{arch}.*` keys `TextModel.set_gguf_parameters` and the architecture's own converter write."""
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = config.rope_parameters
    rope = rope.get("full_attention", rope)  # Gemma-3: the global layers' (llama.cpp fixes the local ones)
    writer.add_rope_freq_base(rope["rope_theta"])
    _rope_scaling(writer, rope)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if float16 else gguf.LlamaFileType.ALL_F32)
    if arch in _PERMUTED_QK:  # LlamaModel.set_gguf_parameters
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
    if arch == gguf.MODEL_ARCH.QWEN3MOE:
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    if arch == gguf.MODEL_ARCH.GEMMA3:
        writer.add_sliding_window(config.sliding_window)
    if arch == gguf.MODEL_ARCH.GPT_OSS:  # GptOssModel.set_gguf_parameters
        writer.add_sliding_window(config.sliding_window)
        writer.add_expert_feed_forward_length(config.intermediate_size)


def _rope_scaling(writer: gguf.GGUFWriter, rope: dict) -> None:
    """`TextModel`'s rope-scaling keys: linear (Gemma-3 4B and up, global layers) or YaRN (gpt-oss)."""
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind != "default":
        raise ValueError(f"no llama.cpp rope scaling written for rope_type {kind!r}")


def _llama_cpp_tensors(model: PreTrainedModel, arch: gguf.MODEL_ARCH) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name llama.cpp maps, tensor as llama.cpp stores it) for every tensor it writes."""
    config = model.config
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().float()
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a tied checkpoint has no lm_head tensor: llama.cpp reads token_embd for the output
        if arch in _PERMUTED_QK and name.endswith(("q_proj.weight", "k_proj.weight")):
            kv = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            yield name, _permute(tensor, config.num_attention_heads, kv)
        elif arch == gguf.MODEL_ARCH.GEMMA3 and name.endswith("norm.weight"):
            yield name, tensor + 1  # Gemma3RMSNorm multiplies by (1 + w)
        elif arch == gguf.MODEL_ARCH.QWEN3MOE and name.endswith("experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)  # (E, 2I, H): gate rows first
            yield name.replace("gate_up_proj", "gate_proj.weight"), gate
            yield name.replace("gate_up_proj", "up_proj.weight"), up
        elif arch == gguf.MODEL_ARCH.QWEN3MOE and name.endswith("experts.down_proj"):
            yield name + ".weight", tensor
        elif arch == gguf.MODEL_ARCH.GPT_OSS and (".experts." in name or name.endswith("sinks")):
            yield from _gpt_oss_tensor(name, tensor)
        else:
            yield name, tensor


def _permute(weights: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute`: each head's rotary halves interleaved (q: n_head_kv = n_head)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _gpt_oss_tensor(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """GptOssModel.modify_tensors for unquantised experts and the attention sinks."""
    if name.endswith("sinks"):
        yield name + ".weight", tensor
    elif name.endswith("down_proj_bias"):
        yield name.replace("down_proj_bias", "down_proj.bias"), tensor
    elif name.endswith("down_proj"):
        yield name + ".weight", tensor.transpose(-1, -2)  # (E, I, H) -> (E, H, I)
    elif name.endswith("gate_up_proj_bias"):
        yield name.replace("gate_up_proj_bias", "gate_proj.bias"), tensor[..., ::2]
        yield name.replace("gate_up_proj_bias", "up_proj.bias"), tensor[..., 1::2]
    elif name.endswith("gate_up_proj"):
        rows = tensor.transpose(-1, -2)  # (E, H, 2I) -> (E, 2I, H), gate and up interleaved
        yield name.replace("gate_up_proj", "gate_proj.weight"), rows[:, ::2]
        yield name.replace("gate_up_proj", "up_proj.weight"), rows[:, 1::2]
    else:
        raise ValueError(f"unexpected gpt-oss expert tensor {name}")


def _vocabulary(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, rows: int) -> None:
    """The `tokenizer.ggml.*` keys of a byte-level BPE tokenizer, as `_set_vocab_gpt2` and SpecialVocab write."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    split = data.get("pre_tokenizer") or {}
    if data["model"]["type"] != "BPE" or split.get("type") != "ByteLevel" or not split.get("use_regex", True):
        raise ValueError("only byte-level BPE tokenizers with GPT-2's split regex are written")
    tokens, types = _tokens_and_types(tokenizer, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for the GPT-2 split regex (ByteLevel's default)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _tokens_and_types(tokenizer: PreTrainedTokenizerBase, rows: int) -> tuple[list[str], list[int]]:
    """`TextModel.get_vocab_base`: one token per embedding row, with llama.cpp's token types."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= rows:
        raise ValueError(f"the tokenizer has ids past the model's {rows} embedding rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]"), types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i]), types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]

"""Convert llama2.c checkpoints (Karpathy's legacy `.bin` export) to Hugging Face `LlamaForCausalLM`.

The `.bin` file is a header of 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len; a negative vocab_size means the classifier is not shared with the embedding), then
fp32 tensors in a fixed order. The tokenizer comes from the SentencePiece `.model` the checkpoint was
trained with; it is rebuilt as a `tokenizers` pipeline so that it needs neither sentencepiece nor the Hub
at load time.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.convert_slow_tokenizer import SentencePieceExtractor

from flexrealign.core.checkpoint import atomic_dir

__all__ = ["Llama2cHeader", "convert_llama2c", "load_llama2c", "read_llama2c", "tokenizer_from_sentencepiece"]

_HEADER = struct.Struct("<7i")
_FLOAT_BYTES = 4
# llama2.c's newer export versions start with this magic ("ak42") instead of `dim`; they are laid out differently
_VERSIONED_MAGIC = 0x616B3432
# llama2.c's run.c hard-codes these ids; the SentencePiece model must agree
_BOS_ID, _EOS_ID = 1, 2
_SPM_BPE = 2  # sentencepiece TrainerSpec.ModelType.BPE
_SPACE = "\u2581"  # SentencePiece's visible space "▁"


@dataclass(frozen=True)
class Llama2cHeader:
    """The 7-int header of a llama2.c checkpoint, with the vocab sign turned into a flag."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size


def _parse_header(path: Path, raw: bytes) -> Llama2cHeader:
    """Decode and sanity-check the header; errors name the file and every bad field."""
    if len(raw) < _HEADER.size:
        raise ValueError(
            f"{path}: truncated llama2.c file: {len(raw)} bytes, the header alone needs {_HEADER.size}"
        )
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len = _HEADER.unpack(raw[: _HEADER.size])
    if dim == _VERSIONED_MAGIC:
        raise ValueError(
            f"{path}: versioned llama2.c export (magic 'ak42'); only the legacy version-0 format is read"
        )
    sizes = {"dim": dim, "hidden_dim": hidden_dim, "n_layers": n_layers, "n_heads": n_heads}
    sizes |= {"n_kv_heads": n_kv_heads, "|vocab_size|": abs(vocab), "seq_len": seq_len}
    problems = [f"{name}={value} must be positive" for name, value in sizes.items() if value <= 0]
    if not problems:
        problems += _divisibility_problems(dim, n_heads, n_kv_heads)
    if problems:
        raise ValueError(
            f"{path}: not a valid llama2.c header {_HEADER.unpack(raw[: _HEADER.size])}: "
            + "; ".join(problems)
        )
    return Llama2cHeader(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab), seq_len, vocab > 0)


def _divisibility_problems(dim: int, n_heads: int, n_kv_heads: int) -> list[str]:
    """Head layout constraints of grouped-query attention with rotary embeddings."""
    problems = []
    if dim % n_heads:
        problems.append(f"n_heads={n_heads} does not divide dim={dim}")
    elif (dim // n_heads) % 2:
        problems.append(f"head size {dim // n_heads} must be even for rotary embeddings")
    if n_heads % n_kv_heads:
        problems.append(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
    return problems


def _tensor_layout(h: Llama2cHeader) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the fp32 tensors, in file order; llama2.c stores Linear weights as (out, in)."""
    n, d = h.n_layers, h.dim
    layout = [
        ("token_embedding", (h.vocab_size, d)),
        ("rms_att", (n, d)),
        ("wq", (n, d, d)),
        ("wk", (n, h.kv_dim, d)),
        ("wv", (n, h.kv_dim, d)),
        ("wo", (n, d, d)),
        ("rms_ffn", (n, d)),
        ("w1", (n, h.hidden_dim, d)),  # gate
        ("w2", (n, d, h.hidden_dim)),  # down
        ("w3", (n, h.hidden_dim, d)),  # up
        ("rms_final", (d,)),
        # precomputed RoPE tables; HF recomputes them from rope_theta, so they are read past and dropped
        ("freq_cis_real", (h.seq_len, h.head_size // 2)),
        ("freq_cis_imag", (h.seq_len, h.head_size // 2)),
    ]
    if not h.shared_classifier:
        layout.append(("wcls", (h.vocab_size, d)))
    return layout


def _check_size(path: Path, h: Llama2cHeader, file_size: int) -> None:
    """The header fixes the file size exactly; anything else means a damaged or misread file."""
    n_floats = sum(int(np.prod(shape)) for _, shape in _tensor_layout(h))
    expected = _HEADER.size + _FLOAT_BYTES * n_floats
    if file_size < expected:
        raise ValueError(f"{path}: truncated llama2.c file: {file_size} bytes, header {h} needs {expected}")
    if file_size > expected:
        extra = file_size - expected
        hint = ""
        if h.shared_classifier and extra == _FLOAT_BYTES * h.vocab_size * h.dim:
            hint = " (exactly one unshared classifier: vocab_size should be negative)"
        raise ValueError(f"{path}: {extra} trailing bytes after the last tensor of header {h}{hint}")


def _split_tensors(flat: torch.Tensor, h: Llama2cHeader) -> dict[str, torch.Tensor]:
    """Cut the flat fp32 payload into named views (no copies)."""
    tensors, start = {}, 0
    for name, shape in _tensor_layout(h):
        numel = int(np.prod(shape))
        tensors[name] = flat[start : start + numel].view(shape)
        start += numel
    return tensors


def _permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k output rows from llama2.c's interleaved rotary pairs to HF's rotate-half layout.

    llama2.c rotates (x0, x1), (x2, x3), ... within each head, HF rotates (x_i, x_{i + head_size/2});
    this is transformers' convert_llama_weights_to_hf.py `permute`.
    """
    out_dim, in_dim = w.shape  # (n_heads * head_size, dim)
    pairs = w.view(n_heads, out_dim // n_heads // 2, 2, in_dim)  # (heads, head_size/2, 2, dim)
    return pairs.transpose(1, 2).reshape(out_dim, in_dim)  # (heads * 2 * head_size/2, dim)


def _to_hf_state_dict(t: dict[str, torch.Tensor], h: Llama2cHeader) -> dict[str, torch.Tensor]:
    """Map llama2.c tensors to `LlamaForCausalLM` parameter names."""
    sd = {
        "model.embed_tokens.weight": t["token_embedding"],  # (vocab, dim)
        "model.norm.weight": t["rms_final"],  # (dim,)
        # a shared classifier is the embedding itself; the key keeps load_state_dict(strict=True) happy
        "lm_head.weight": t.get("wcls", t["token_embedding"]),  # (vocab, dim)
    }
    for i in range(h.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = t["rms_att"][i]  # (dim,)
        sd[p + "self_attn.q_proj.weight"] = _permute_rotary(t["wq"][i], h.n_heads)  # (dim, dim)
        sd[p + "self_attn.k_proj.weight"] = _permute_rotary(t["wk"][i], h.n_kv_heads)  # (kv_dim, dim)
        sd[p + "self_attn.v_proj.weight"] = t["wv"][i]  # (kv_dim, dim)
        sd[p + "self_attn.o_proj.weight"] = t["wo"][i]  # (dim, dim)
        sd[p + "post_attention_layernorm.weight"] = t["rms_ffn"][i]  # (dim,)
        sd[p + "mlp.gate_proj.weight"] = t["w1"][i]  # (hidden_dim, dim)
        sd[p + "mlp.down_proj.weight"] = t["w2"][i]  # (dim, hidden_dim)
        sd[p + "mlp.up_proj.weight"] = t["w3"][i]  # (hidden_dim, dim)
    return sd


def _hf_config(h: Llama2cHeader) -> LlamaConfig:
    """The HF config equivalent of llama2.c's fixed architecture choices (see run.c)."""
    return LlamaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        head_dim=h.head_size,
        hidden_act="silu",
        max_position_embeddings=h.seq_len,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=h.shared_classifier,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        # no pad token in the vocab; a pad id here would also zero that embedding row's gradient
        pad_token_id=None,
        dtype=torch.float32,
    )


def read_llama2c(path: str | os.PathLike[str]) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Read a legacy llama2.c `.bin` into an HF config and `LlamaForCausalLM` state dict (fp32).

    Raises ValueError naming the file when it is truncated, has trailing bytes or a nonsensical header.
    """
    path = Path(path)
    with path.open("rb") as f:
        header = _parse_header(path, f.read(_HEADER.size))
    _check_size(path, header, path.stat().st_size)
    # np.fromfile gives a writable array, so torch.from_numpy shares it without a copy or a warning
    flat = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=_HEADER.size))  # (n_floats,)
    tensors = _split_tensors(flat, header)
    return _hf_config(header), _to_hf_state_dict(tensors, header)


def _sentencepiece_normalizer(proto: Any) -> normalizers.Normalizer:
    """Reproduce SentencePiece's identity normalizer: squeeze/strip ASCII spaces, dummy prefix, '▁'."""
    spec = proto.normalizer_spec
    steps = []
    if spec.remove_extra_whitespaces:
        # only ' ' counts for sentencepiece (tabs and newlines stay), so Strip() would be wrong here
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(_SPACE))  # skips empty strings, as sentencepiece does
    steps.append(normalizers.Replace(" ", _SPACE))
    return normalizers.Sequence(steps)


def _check_sentencepiece(path: Path, proto: Any) -> None:
    """Only plain BPE models with the identity normalizer are emulated exactly."""
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    problems = []
    if trainer.model_type != _SPM_BPE:
        problems.append(f"model_type {trainer.model_type} is not BPE ({_SPM_BPE})")
    if spec.precompiled_charsmap or spec.normalization_rule_tsv:
        problems.append(f"normalizer {spec.name!r} is not the identity")
    if (trainer.unk_id, trainer.bos_id, trainer.eos_id) != (0, _BOS_ID, _EOS_ID):
        problems.append(
            f"unk/bos/eos ids {(trainer.unk_id, trainer.bos_id, trainer.eos_id)} are not (0, 1, 2)"
        )
    if problems:
        raise ValueError(f"{path}: unsupported SentencePiece model: " + "; ".join(problems))


def tokenizer_from_sentencepiece(
    model_path: str | os.PathLike[str], model_max_length: int
) -> PreTrainedTokenizerFast:
    """A fast HF tokenizer that encodes exactly like `SentencePieceProcessor` and prepends BOS.

    Padding uses `<unk>` (the vocab has no pad token and byte fallback never emits unk); callers pick
    `padding_side` ("left" for batched generation).
    """
    path = Path(model_path)
    extractor = SentencePieceExtractor(str(path))
    proto = extractor.proto
    _check_sentencepiece(path, proto)
    pieces = extractor.extract(BPE)  # vocab in id order, merges ranked by id (= sentencepiece score order)
    unk, bos, eos = (proto.pieces[i].piece for i in (0, _BOS_ID, _EOS_ID))
    bpe = BPE(
        vocab=pieces["vocab"], merges=pieces["merges"], unk_token=unk, fuse_unk=True, byte_fallback=True
    )
    backend = Tokenizer(bpe)
    backend.normalizer = _sentencepiece_normalizer(proto)
    strip = [decoders.Strip(" ", 1, 0)] if proto.normalizer_spec.add_dummy_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (unk, bos, eos)])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, _BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=unk,
        model_max_length=model_max_length,
    )


def _check_compatible(config: LlamaConfig, tokenizer: PreTrainedTokenizerBase, tokenizer_model: Path) -> None:
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"{tokenizer_model}: {len(tokenizer)} tokens, but the checkpoint has vocab_size={config.vocab_size}"
        )


def _build_model(config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """An fp32 eval-mode model holding exactly the converted weights."""
    model = LlamaForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("lm_head is not tied to embed_tokens although tie_word_embeddings=True")
    # pad with <unk> like the tokenizer, so generate() does not warn or fall back to eos
    model.generation_config = GenerationConfig(bos_token_id=_BOS_ID, eos_token_id=_EOS_ID, pad_token_id=0)
    return model.float().eval()


def load_llama2c(
    bin_path: str | os.PathLike[str], tokenizer_model: str | os.PathLike[str]
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Convert in memory: an fp32 `LlamaForCausalLM` in eval mode and its fast tokenizer."""
    config, state_dict = read_llama2c(bin_path)
    tokenizer = tokenizer_from_sentencepiece(tokenizer_model, model_max_length=config.max_position_embeddings)
    _check_compatible(config, tokenizer, Path(tokenizer_model))
    return _build_model(config, state_dict), tokenizer


def convert_llama2c(
    bin_path: str | os.PathLike[str],
    tokenizer_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a standard HF checkpoint (config, safetensors, generation config, tokenizer) to `out_dir`.

    The files are written into a temp dir beside `out_dir` and renamed into place, so readers never
    see a partial checkpoint. An existing `out_dir` raises FileExistsError unless `overwrite`.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    model, tokenizer = load_llama2c(bin_path, tokenizer_model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)  # transformers 5 always writes model.safetensors
        tokenizer.save_pretrained(tmp)
    return out

"""GGUF files of every decoder family, written as llama.cpp writes them, converted back by `gguf_convert`.

Each tiny model goes through `gguf_writer.write_gguf` (llama.cpp's tensor names, per-architecture transforms
and metadata, a byte-level BPE tokenizer) and `convert_gguf`; the checkpoint that comes out must compute the
original model's logits, tokenize as the original tokenizer does, and give an InRa model that behaves as the
original's. Configs are the families' tiny ones, changed only where llama.cpp hard-codes what the family's
config leaves free (see `CASES`): there the file means the same thing to llama.cpp and to transformers.

Two families cannot be read back with transformers 5.19 to 5.25 (`UNREADABLE`); their round trip skips
with the reason, and `test_unreadable_family_is_refused` checks that the conversion stops with a clear error
instead of writing a model with made-up weights.
"""

from __future__ import annotations

import math

import pytest
import torch

gguf = pytest.importorskip("gguf")

from gguf_writer import write_gguf  # noqa: E402
from tiny_checkpoints import bpe_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from flexrealign.conversion import gguf_convert  # noqa: E402
from flexrealign.conversion.gguf_convert import convert_gguf, load_gguf  # noqa: E402
from flexrealign.core.checkpoint import CheckpointError  # noqa: E402
from flexrealign.core.inra import InRaModel  # noqa: E402
from flexrealign.core.tiny import tiny_model  # noqa: E402
from helpers import perturb_adapter  # noqa: E402

VOCAB = 300  # 256 byte tokens, 4 specials, 2 think tokens, 38 merges
# Gemma-3 as llama.cpp runs it: every sixth layer global (the pattern is hard-coded, not in the file), and
# queries scaled by 1/sqrt(head_dim) (query_pre_attn_scalar, not in the file either: transformers assumes 256).
GEMMA3 = {
    "num_layers": 6,
    "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "num_heads": 2,
    "num_kv_heads": 1,
    "tie_word_embeddings": True,  # as the released Gemma-3 models: the file has no output.weight
}
CASES = {
    "llama": {},
    "qwen3": {},  # head_dim 16, not Qwen3Config's 128: read from attention.key_length
    # llama.cpp's qwen3moe has no dense layers (nor does any released Qwen3-MoE model)
    "qwen3_moe": {"mlp_only_layers": []},
    "gemma3_text": GEMMA3,
    "gpt_oss": {},
    "smollm3": {},
}
UNREADABLE = {
    "gpt_oss": "transformers' GGUF reader cannot read llama.cpp's gpt-oss files: it parses the "
    "gpt-oss.rope.scaling.* keys llama.cpp writes from the wrong part of the field (a TypeError while "
    "building the config), and even without them it maps none of the expert tensors (ffn_{gate,up,down}_exps "
    "and their biases) nor attn_sinks, which would stay random",
    "smollm3": "transformers' GGUF reader has no smollm3 architecture, and llama.cpp's smollm3 file is "
    "Llama's tensors under that name: which layers skip the rotary embedding is not in the file (llama.cpp "
    "hard-codes every fourth), so reading it as llama would put RoPE back into the NoPE layers "
    "(test_smollm3_as_llama_loses_the_nope_layers)",
}
TEXTS = [
    "the cat and the hat, 123. what is it? the cat is on the mat, and it is hot.",  # past the sliding windows
    "<think>x</think> </s><s> héllo 😀\n\n  tab\t<pad><unk> <mask> <|endoftext|>",
]
CHAT = [{"role": "user", "content": "what is the hat?"}, {"role": "assistant", "content": "it is hot"}]


def round_trip(tmp_path, family: str, float16: bool = False, **overrides):
    """(original model, original tokenizer, converted model, converted tokenizer) through a GGUF file."""
    tok = bpe_tokenizer(VOCAB)
    model = tiny_model(family, vocab_size=VOCAB, **{**CASES[family], **overrides})
    path = write_gguf(model, tok, tmp_path / f"{family}.gguf", float16=float16)
    try:
        out = convert_gguf(path, tmp_path / "converted")
    except CheckpointError as e:
        if family in UNREADABLE:
            pytest.skip(f"{UNREADABLE[family]} ({e})")
        raise
    converted = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    return model, tok, converted, AutoTokenizer.from_pretrained(out)


def batch(tok) -> dict:
    """The texts as one left-padded batch of the original tokenizer's ids."""
    tok.padding_side = "left"
    return dict(tok(TEXTS, return_tensors="pt", padding=True))


def assert_same_config(want, got) -> None:
    """Every field of the original config holds in the converted one (floats to float32 precision: the file
    stores rms_norm_eps as f32), whatever transformers adds (the file's name, unk id)."""

    def same(a, b) -> bool:
        if isinstance(a, float) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=1e-6)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() <= b.keys() and all(same(v, b[k]) for k, v in a.items())
        return a == b

    ignore = {"transformers_version", "_name_or_path", "name_or_path", "architectures"}
    have = got.to_dict()
    diff = {
        k: (v, have.get(k)) for k, v in want.to_dict().items() if k not in ignore and not same(v, have.get(k))
    }
    assert not diff, diff


@pytest.mark.parametrize("family", CASES)
@torch.no_grad()
def test_converted_model_computes_the_original(tmp_path, family):
    """Same class, config and logits (fp32 file: to float32 rounding); tied embeddings stay tied."""
    model, tok, converted, _ = round_trip(tmp_path, family)
    assert type(converted) is type(model)
    assert_same_config(model.config, converted.config)
    inputs = batch(tok)
    torch.testing.assert_close(converted(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)
    tied = converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    assert tied == model.config.tie_word_embeddings


@pytest.mark.parametrize("family", CASES)
def test_converted_tokenizer_tokenizes_as_the_original(tmp_path, family):
    """Same vocabulary, ids, special tokens and chat template: nothing added past the file's tokens."""
    _, tok, _, converted = round_trip(tmp_path, family)
    assert converted.get_vocab() == tok.get_vocab() and len(converted) == len(tok) == VOCAB
    for text in TEXTS:
        assert converted(text)["input_ids"] == tok(text)["input_ids"], text
        assert converted.decode(converted(text)["input_ids"]) == text
    specials = ("bos_token", "eos_token", "pad_token", "unk_token")
    assert [getattr(converted, s) for s in specials] == [getattr(tok, s) for s in specials]
    chat = converted.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert chat == tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", CASES)
@torch.no_grad()
def test_inra_on_the_converted_model(tmp_path, family):
    """InRa on the converted model is an identity at init (lam 0 and 1), and with the same adapter noise it
    computes what InRa on the original computes at every lam (per-layer settings carried over)."""
    model, tok, converted, _ = round_trip(tmp_path, family)
    inputs = batch(tok)
    want = converted(**inputs).logits
    inra = InRaModel.from_base(converted)
    for lam in (0.0, 1.0):
        torch.testing.assert_close(inra(**inputs, lam=lam).logits, want, atol=1e-5, rtol=0)
    ours, theirs = perturb_adapter(inra, scale=0.2), perturb_adapter(InRaModel.from_base(model), scale=0.2)
    for lam in (0.5, 2.0):
        got, ref = ours(**inputs, lam=lam).logits, theirs(**inputs, lam=lam).logits
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        assert not torch.allclose(got, want, atol=1e-3)  # the adapter is not an identity any more


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "gemma3_text"])
@torch.no_grad()
def test_f16_file_converts_to_the_rounded_model(tmp_path, family):
    """An f16 file (1-D tensors stay f32, as llama.cpp writes them) converts to the original model with its
    matrices rounded to f16: nothing else changes on the way."""
    model, tok, converted, _ = round_trip(tmp_path, family, float16=True)
    for p in model.parameters():
        if p.dim() > 1:
            p.copy_(p.half().float())
    inputs = batch(tok)
    torch.testing.assert_close(converted(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", UNREADABLE)
def test_unreadable_family_is_refused(tmp_path, family):
    """A file transformers cannot read fully is a CheckpointError, and no checkpoint is written. (When a new
    transformers reads the family, this fails: drop it from UNREADABLE, and the round trips run in full.)"""
    path = write_gguf(tiny_model(family, vocab_size=VOCAB, **CASES[family]), bpe_tokenizer(VOCAB),
                      tmp_path / f"{family}.gguf")  # fmt: skip
    with pytest.raises(CheckpointError, match="transformers"):
        convert_gguf(path, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


@torch.no_grad()
def test_smollm3_as_llama_loses_the_nope_layers(tmp_path):
    """Why SmolLM3 cannot go through transformers' llama reader instead: its tensors written as a llama file
    convert to a Llama model that is SmolLM3 with RoPE in every layer, not the original."""
    tok, model = bpe_tokenizer(VOCAB), tiny_model("smollm3", vocab_size=VOCAB)
    assert 0 in model.config.no_rope_layers  # the tiny SmolLM3 has a NoPE layer
    path = write_gguf(model, tok, tmp_path / "smollm3-as-llama.gguf", arch=gguf.MODEL_ARCH.LLAMA)
    converted = AutoModelForCausalLM.from_pretrained(convert_gguf(path, tmp_path / "llama")).eval()
    assert converted.config.model_type == "llama"
    roped = tiny_model("smollm3", vocab_size=VOCAB, no_rope_layers=[1] * model.config.num_hidden_layers)
    roped.load_state_dict(model.state_dict())
    inputs = batch(tok)
    got = converted(**inputs).logits
    torch.testing.assert_close(got, roped(**inputs).logits, atol=1e-5, rtol=0)
    assert not torch.allclose(got, model(**inputs).logits, atol=1e-3)


def test_a_file_missing_a_tensor_is_refused(tmp_path):
    """A weight transformers does not find in the file is an error naming it, not a random tensor in the
    checkpoint (transformers itself only warns and initialises it)."""
    path = write_gguf(tiny_model("llama", vocab_size=VOCAB), bpe_tokenizer(VOCAB), tmp_path / "damaged.gguf",
                      drop={"blk.1.ffn_down.weight"})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"unread.*model\.layers\.1\.mlp\.down_proj\.weight"):
        convert_gguf(path, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_config_the_reader_skips_is_read_from_the_file(tmp_path, monkeypatch):
    """transformers' reader leaves Qwen3-MoE's expert width at Qwen3MoeConfig's 768: the conversion takes it
    from the file (the round trips above need it); without that, a clear error rather than a crash."""
    tok, model = bpe_tokenizer(VOCAB), tiny_model("qwen3_moe", vocab_size=VOCAB, **CASES["qwen3_moe"])
    path = write_gguf(model, tok, tmp_path / "qwen3moe.gguf")
    converted, _ = load_gguf(path)
    assert converted.config.moe_intermediate_size == model.config.moe_intermediate_size != 768
    monkeypatch.setattr(gguf_convert, "_UNREAD_CONFIG", {})
    # 5.19 loads the tensors into the 768-wide config and the rebuild finds they do not fit; 5.25 refuses itself
    with pytest.raises(CheckpointError, match="do not fit|ignore_mismatched_sizes"):
        load_gguf(path)


@torch.no_grad()
def test_gemma3_linear_rope_scaling_survives(tmp_path):
    """A Gemma-3 with linearly scaled global rotary positions, as Gemma-3 4B and larger: transformers' reader
    (5.19 to 5.25) drops llama.cpp's gemma3.rope.scaling.*, and the conversion puts it back."""
    rope = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    model, tok, converted, _ = round_trip(tmp_path, "gemma3_text", rope_parameters=rope)
    inputs = batch(tok)
    torch.testing.assert_close(converted(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)

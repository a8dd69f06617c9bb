"""llama2.c -> Hugging Face conversion: the real stories260K checkpoint, file validation, a synthetic round trip."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from flexrealign.conversion.llama2c import convert_llama2c, read_llama2c
from helpers import shared_path

LILY = "Once upon a time, there was a little girl named Lily"
TEXTS = [
    "Once upon a time",
    'Lily saw a big dog. "Hello!" she said, and they played all day.',
    "Tom had 3 red balls\nand 12 blue ones.",
    "Café ☕ and 😀 need byte fallback.",
]
# sentencepiece squeezes and strips spaces (remove_extra_whitespaces), so these only match, not round-trip
SQUEEZED = ["  two  spaces  ", " \ttab", ""]


def _bin() -> Path:
    return shared_path("models", "stories260K", "stories260K.bin")


def _spm_model() -> Path:
    return shared_path("models", "stories260K", "tok512.model")


def _greedy(model: LlamaForCausalLM, input_ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=mask, max_new_tokens=n, do_sample=False)


def test_greedy_from_bos_tells_lilys_story(stories260k) -> None:
    model, tok = stories260k
    bos = torch.tensor([[tok.bos_token_id]])  # (1, 1)
    out = _greedy(model, bos, torch.ones_like(bos), n=40)
    assert tok.decode(out[0], skip_special_tokens=True).startswith(LILY)


def test_config_and_shapes_follow_the_header() -> None:
    config, state = read_llama2c(_bin())
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 5, 512)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 4, 8)
    assert config.tie_word_embeddings and config.max_position_embeddings == 512
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert all(t.dtype == torch.float32 for t in state.values())


@pytest.mark.parametrize("text", TEXTS + SQUEEZED)
def test_tokenizer_matches_sentencepiece(stories260k, text: str) -> None:
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(_spm_model()))
    _, tok = stories260k
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    assert tok.encode(text) == [sp.bos_id(), *sp.encode(text)]
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == sp.decode(sp.encode(text))
    if text in TEXTS:
        assert sp.decode(sp.encode(text)) == text


def test_left_padded_batch_generates_like_single_prompts(stories260k) -> None:
    model, tok = stories260k
    prompts = ["Once upon a time", "Lily"]
    batch = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    batched = _greedy(model, batch.input_ids, batch.attention_mask, n=12)[:, -12:]  # (2, 12)
    for row, prompt in zip(batched, prompts, strict=True):
        single = tok(prompt, return_tensors="pt")
        assert torch.equal(row, _greedy(model, single.input_ids, single.attention_mask, n=12)[0, -12:])


def test_converted_dir_reloads_with_auto_classes(stories260k, tmp_path: Path) -> None:
    model, tok = stories260k
    out = convert_llama2c(_bin(), _spm_model(), tmp_path / "hf")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # the temp dir was renamed, nothing left over
    model2 = AutoModelForCausalLM.from_pretrained(out).eval()
    tok2 = AutoTokenizer.from_pretrained(out)
    assert all(tok2.encode(t) == tok.encode(t) for t in TEXTS + SQUEEZED)
    batch = tok2(TEXTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model2(**batch).logits, model(**batch).logits)
    with pytest.raises(FileExistsError):
        convert_llama2c(_bin(), _spm_model(), out)


def _damaged_copy(tmp_path: Path, edit) -> Path:
    data = bytearray(_bin().read_bytes())
    path = tmp_path / "damaged.bin"
    path.write_bytes(edit(data))
    return path


@pytest.mark.parametrize("keep", [10, 28, -100])
def test_truncated_file_is_a_clear_error(tmp_path: Path, keep: int) -> None:
    path = _damaged_copy(tmp_path, lambda data: data[:keep])
    with pytest.raises(ValueError, match="truncated") as err:
        read_llama2c(path)
    assert str(path) in str(err.value)


def test_trailing_bytes_are_a_clear_error(tmp_path: Path) -> None:
    path = _damaged_copy(tmp_path, lambda data: data + b"\0" * 8)
    with pytest.raises(ValueError, match="8 trailing bytes"):
        read_llama2c(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (0, 0, "dim=0 must be positive"),
        (2, -5, "n_layers=-5 must be positive"),
        (3, 7, "n_heads=7 does not divide dim=64"),
        (4, 3, "n_kv_heads=3 does not divide n_heads=8"),
        (6, 0, "seq_len=0 must be positive"),
        (0, 0x616B3432, "versioned llama2.c export"),
    ],
)
def test_bad_header_is_a_clear_error(tmp_path: Path, field: int, value: int, message: str) -> None:
    def edit(data: bytearray) -> bytearray:
        struct.pack_into("<i", data, 4 * field, value)
        return data

    path = _damaged_copy(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as err:
        read_llama2c(path)
    assert str(path) in str(err.value)


def _to_llama2c_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of the converter's rotary permutation: HF rotate-half rows back to interleaved pairs."""
    out_dim, in_dim = w.shape  # (n_heads * head_size, dim)
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _write_llama2c(model: LlamaForCausalLM, path: Path) -> None:
    """Export an untied HF Llama as a llama2.c file with a negative vocab_size (unshared classifier)."""
    c, layers = model.config, model.model.layers
    header = (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads)
    header += (c.num_key_value_heads, -c.vocab_size, c.max_position_embeddings)
    stacked = [
        [layer.input_layernorm.weight for layer in layers],
        [_to_llama2c_rows(layer.self_attn.q_proj.weight, c.num_attention_heads) for layer in layers],
        [_to_llama2c_rows(layer.self_attn.k_proj.weight, c.num_key_value_heads) for layer in layers],
        *([getattr(layer.self_attn, n).weight for layer in layers] for n in ("v_proj", "o_proj")),
        [layer.post_attention_layernorm.weight for layer in layers],
        *([getattr(layer.mlp, n).weight for layer in layers] for n in ("gate_proj", "down_proj", "up_proj")),
    ]
    freq_cis = torch.zeros(2, c.max_position_embeddings, c.head_dim // 2)  # real and imag, unused
    parts = [model.model.embed_tokens.weight, *map(torch.stack, stacked), model.model.norm.weight, freq_cis]
    payload = torch.cat([p.detach().flatten() for p in [*parts, model.lm_head.weight]])
    path.write_bytes(struct.pack("<7i", *header) + payload.numpy().astype("<f4").tobytes())


def test_unshared_classifier_round_trip(tmp_path: Path) -> None:
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    original = LlamaForCausalLM(config).eval()
    _write_llama2c(original, tmp_path / "tiny.bin")
    read_config, state = read_llama2c(tmp_path / "tiny.bin")
    assert not read_config.tie_word_embeddings
    converted = LlamaForCausalLM(read_config).eval()
    converted.load_state_dict(state, strict=True)
    ids = torch.randint(0, 40, (2, 9))  # (batch, seq)
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, original(ids).logits)


def test_trailing_classifier_with_positive_vocab_gets_a_hint(tmp_path: Path) -> None:
    extra = b"\0" * (4 * 512 * 64)  # one (vocab, dim) classifier too many for a shared-classifier header
    path = tmp_path / "extra.bin"
    shutil.copyfile(_bin(), path)
    with path.open("ab") as f:
        f.write(extra)
    with pytest.raises(ValueError, match="vocab_size should be negative"):
        read_llama2c(path)

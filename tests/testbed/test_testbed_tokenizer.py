"""The testbed tokenizer: a real Hugging Face fast tokenizer that round-trips the task's text exactly."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from flexrealign.core.tiny import tiny_config
from flexrealign.decoding.generation import encode_prompts
from flexrealign.testbed.task import make_problems
from flexrealign.testbed.tokenizer import build_tokenizer


def test_round_trip_of_every_trace() -> None:
    tok = build_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    for p in make_problems(100, seed=0):
        for text in (p.question, p.long, p.short, p.efficient):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
            assert tok.decode(ids, skip_special_tokens=True) == text  # <think> markers are not special


def test_one_token_per_symbol_and_think_markers() -> None:
    tok = build_tokenizer()
    assert tok.convert_ids_to_tokens(tok("<think>\n0+A7=7\n</think>\n\\boxed{7}")["input_ids"]) == [
        "<think>", "\n", "0", "+", "A", "7", "=", "7", "\n", "</think>", "\n", "\\boxed{", "7", "}",
    ]  # fmt: skip


def test_special_ids_match_tiny_config_and_chat_template() -> None:
    tok, cfg = build_tokenizer(), tiny_config()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (
        cfg.pad_token_id,
        cfg.bos_token_id,
        cfg.eos_token_id,
    )
    messages = [{"role": "user", "content": "A1+B2"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nA1+B2<|im_end|>\n<|im_start|>assistant\n"
    (ids,) = encode_prompts(tok, [messages])
    assert tok.decode(ids) == text


def test_save_and_reload(tmp_path) -> None:
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    p = make_problems(1, seed=1)[0]
    assert again(p.long)["input_ids"] == tok(p.long)["input_ids"]
    assert again.chat_template == tok.chat_template
    assert len(again) == len(tok)

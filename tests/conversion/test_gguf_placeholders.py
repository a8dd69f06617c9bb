"""GGUF conversion keeps the real vocabulary: llama.cpp's placeholder tokens never become tokens.

llama.cpp writes one token per embedding row; Qwen-family models pad their matrices past the tokenizer, so a
GGUF file lists `[PAD{i}]` placeholders (type UNUSED, or USER_DEFINED in older versions; `<dummy00001>`... in
the legacy convert.py) for the rows with no token. The files here are written the way llama.cpp's
`convert_hf_to_gguf.py` writes them (the `gguf` package's GGUFWriter, llama.cpp's tensor names), for a tiny
Qwen2 model whose placeholder rows are the most likely tokens at every position.
"""

from __future__ import annotations

import json

import pytest
import torch

gguf = pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from flexrealign.conversion import gguf_vocab  # noqa: E402
from flexrealign.conversion.gguf_convert import convert_gguf, load_gguf  # noqa: E402
from flexrealign.conversion.loading import load_model, load_tokenizer  # noqa: E402
from flexrealign.core.adapter import AdapterConfig  # noqa: E402
from flexrealign.core.inra import InRaModel  # noqa: E402
from flexrealign.core.tiny import tiny_model  # noqa: E402
from flexrealign.decoding.generation import generate  # noqa: E402
from flexrealign.serving import Engine, SamplingParams  # noqa: E402
from helpers import perturb_adapter, shared_path  # noqa: E402

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
HIDDEN = 8
LAMS = [0.0, 1.0, -1.0, 2.0]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "Ġ a", "Ġ c", "Ġc a"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PROMPTS = ["the cat and the hat", [{"role": "user", "content": "a cat in the tin"}]]


def placeholder(style: str, token_id: int, index: int) -> tuple[str, int]:
    """(text, token type) of a placeholder as each llama.cpp converter writes it (`index` counts from 1)."""
    if style == "unused":  # convert_hf_to_gguf.py today
        return f"[PAD{token_id}]", UNUSED
    if style == "user_defined":  # convert_hf_to_gguf.py before placeholders were typed UNUSED
        return f"[PAD{token_id}]", USER_DEFINED
    return f"<dummy{index:05}>", USER_DEFINED  # the legacy convert.py --pad-vocab


def tiny_vocab() -> tuple[list[str], list[int]]:
    """A byte-level BPE vocabulary: the 256 byte symbols, the merged tokens, then Qwen's control tokens."""
    real = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    return real + SPECIALS, [NORMAL] * len(real) + [CONTROL] * len(SPECIALS)


def dominant_rows(model: torch.nn.Module, rows: list[int]) -> None:
    """Give `rows` of the lm_head the largest logit at every position: +-100 along each hidden axis.

    A real row has norm ~0.1, so its logit is at most 0.1 * |h| < 100 * max|h_j|, which one of these rows
    reaches; needs 2 * hidden rows.
    """
    assert len(rows) >= 2 * HIDDEN
    with torch.no_grad():
        for k, row in enumerate(rows):
            model.lm_head.weight[row].zero_()
            model.lm_head.weight[row, k % HIDDEN] = 100.0 if (k // HIDDEN) % 2 == 0 else -100.0


def write_gguf(path, model, tokens, types, merges, eos_id: int, pad_id: int | None = None) -> None:
    """A Qwen2 GGUF file of `model` (fp32), with the tokenizer metadata convert_hf_to_gguf.py writes."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(eos_id)
    w.add_pad_token_id(eos_id if pad_id is None else pad_id)
    w.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        module, suffix = name.rsplit(".", 1)
        w.add_tensor(f"{names.get_name(module)}.{suffix}", tensor.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def qwen_style_file(tmp_path, style: str = "unused", rows: int = 320):
    """A tiny Qwen2 GGUF: the tiny vocabulary, then placeholders up to `rows`, placeholder rows dominant.

    Returns (path, the original vocabulary {text: id}, the original model).
    """
    tokens, types = tiny_vocab()
    real = len(tokens)
    for index, token_id in enumerate(range(real, rows), start=1):
        text, kind = placeholder(style, token_id, index)
        tokens.append(text), types.append(kind)
    model = tiny_model("qwen2", vocab_size=rows, hidden_size=HIDDEN, num_layers=1, num_heads=2,
                       num_kv_heads=1, intermediate_size=16)  # fmt: skip
    dominant_rows(model, list(range(real, rows)))
    path = tmp_path / f"qwen-{style}.gguf"
    write_gguf(path, model, tokens, types, MERGES, eos_id=tokens.index("<|im_end|>"))
    return path, {t: i for i, t in enumerate(tokens[:real])}, model


def assert_never_generates(model, tok, banned_from: int, lams=(None,)) -> None:
    """Greedy generation (EOS ignored) at each lam never emits an id >= banned_from, nor a placeholder's text."""
    for lam in lams:
        out = generate(model, tok, PROMPTS, lam=lam, max_new_tokens=6, ignore_eos=True)
        ids = [i for row in out.token_ids for i in row]
        assert ids and max(ids) < banned_from, (lam, out.token_ids)
        assert not any("[PAD" in t or "<dummy" in t for t in out.texts), (lam, out.texts)


def top_token(model, tok) -> int:
    """The most likely next token after the first prompt, unmasked."""
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return int(model(ids).logits[0, -1].argmax())


@pytest.mark.parametrize("style", ["unused", "user_defined", "dummy"])
def test_converted_tokenizer_holds_only_the_real_vocabulary(tmp_path, style):
    path, vocab, original = qwen_style_file(tmp_path, style)
    out = convert_gguf(path, tmp_path / "converted")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert len(tok) == len(vocab) == 256 + len(MERGES) + len(SPECIALS)
    assert tok.get_vocab() == vocab
    assert not any(t.startswith(("[PAD", "<dummy")) for t in tok.get_vocab())
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "the cat"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.decode(tok(text)["input_ids"]) == text
    # every embedding row is kept, weights unchanged
    assert model.config.vocab_size == 320
    assert torch.equal(model.lm_head.weight, original.lm_head.weight)
    assert top_token(model, tok) >= len(tok)  # the weights prefer a placeholder row...
    assert_never_generates(model, tok, len(tok))  # ...which generation never emits


@torch.no_grad()
def test_placeholder_rows_stay_masked_at_every_lam(tmp_path):
    """InRa on the GGUF model (loaded by path, as `generate --model file.gguf` does): lam 0, 1, -1 and 2."""
    path, vocab, _ = qwen_style_file(tmp_path)
    base, tok = load_model(str(path), device="cpu"), load_tokenizer(str(path))
    assert len(tok) == len(vocab) and tok.get_vocab() == vocab
    model = perturb_adapter(InRaModel.from_base(base, AdapterConfig(num_layers=1)), scale=0.5).eval()
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    for lam in LAMS:
        assert int(model(ids, lam=lam).logits[0, -1].argmax()) >= len(tok), lam  # unmasked: a placeholder
    assert_never_generates(model, tok, len(tok), LAMS)


def test_placeholder_inside_the_vocabulary_keeps_the_ids_and_is_never_text(tmp_path):
    """A hole in the original vocabulary (a placeholder before real tokens) keeps its id as a special token
    that decodes to nothing, is listed in suppress_tokens, and Hugging Face generate never picks it; a pad
    token that names a trailing placeholder is unset rather than added back."""
    tokens, types = tiny_vocab()
    hole = len(tokens) - len(SPECIALS)  # between the BPE tokens and the control tokens
    tokens.insert(hole, f"[PAD{hole}]"), types.insert(hole, UNUSED)
    real = len(tokens)
    tokens += [f"[PAD{i}]" for i in range(real, 300)]
    types += [UNUSED] * (300 - real)
    model = tiny_model("qwen2", vocab_size=300, hidden_size=HIDDEN, num_layers=1, num_heads=2,
                       num_kv_heads=1, intermediate_size=16)  # fmt: skip
    path = tmp_path / "hole.gguf"
    write_gguf(path, model, tokens, types, MERGES, eos_id=tokens.index("<|im_end|>"), pad_id=299)
    converted, tok = load_gguf(path)
    assert len(tok) == real
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == [real - 3, real - 2, real - 1]
    assert tok.convert_ids_to_tokens(hole) == f"<|unused_{hole}|>"
    assert tok.decode([hole], skip_special_tokens=True) == ""
    assert not any(t.startswith("[PAD") for t in tok.get_vocab())
    assert tok.pad_token is None and tok.eos_token == "<|im_end|>"
    assert converted.generation_config.suppress_tokens == [hole]
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    # make row `hole` the most likely next token: 100 * the direction of the last hidden state
    with torch.no_grad():
        h = converted(ids, output_hidden_states=True).hidden_states[-1][0, -1]
        converted.lm_head.weight[hole] = 100 * h / h.norm()
    assert top_token(converted, tok) == hole
    out = converted.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=real - 1)
    assert hole not in out[0, ids.shape[1] :].tolist()
    out = generate(converted, tok, PROMPTS, max_new_tokens=6, ignore_eos=True)
    assert not any("[PAD" in t or "<|unused" in t for t in out.texts)
    assert not any(hole in ids for ids in out.token_ids)  # flexrealign's samplers honour suppress_tokens too
    inra = perturb_adapter(InRaModel.from_base(converted), scale=0.05)
    for lam in (-1.0, 0.0, 1.0, 2.0):
        assert not any(
            hole in ids for ids in generate(inra, tok, PROMPTS, lam=lam, max_new_tokens=4).token_ids
        )
    with Engine(converted, tok) as engine:
        served = engine.submit(ids[0].tolist(), None, SamplingParams(max_tokens=4, ignore_eos=True)).result(
            60
        )
    assert hole not in served.token_ids


def qwen3_file(tmp_path, rows: int = 151_936):
    """A GGUF of the real Qwen3 tokenizer written as convert_hf_to_gguf.py writes it (BPE tokens NORMAL, added
    tokens CONTROL when special or `<|…|>`, else USER_DEFINED, `[PAD{i}]` UNUSED up to `rows`), on a tiny model.

    Returns (path, the original tokenizer, the model written, placeholder rows dominant).
    """
    folder = shared_path("tokenizers", "qwen3")
    original = AutoTokenizer.from_pretrained(folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: (t, NORMAL) for t, i in data["model"]["vocab"].items()}
    for added in data["added_tokens"]:
        looks_special = added["content"].startswith("<|") and added["content"].endswith("|>")
        by_id[added["id"]] = (
            added["content"],
            CONTROL if added["special"] or looks_special else USER_DEFINED,
        )
    entries = [by_id.get(i, (f"[PAD{i}]", UNUSED)) for i in range(rows)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    model = tiny_model("qwen2", vocab_size=rows, hidden_size=HIDDEN, num_layers=1, num_heads=2,
                       num_kv_heads=1, intermediate_size=16)  # fmt: skip
    dominant_rows(model, list(range(len(original), len(original) + 2 * HIDDEN)))
    path = tmp_path / "qwen3-tiny.gguf"
    write_gguf(path, model, [t for t, _ in entries], [k for _, k in entries], merges,
               eos_id=original.convert_tokens_to_ids("<|im_end|>"),
               pad_id=original.convert_tokens_to_ids("<|endoftext|>"))  # fmt: skip
    return path, original, model


@pytest.mark.slow
def test_real_qwen3_vocabulary_padded_to_151936_rows(tmp_path):
    """The tokenizer of a realistic Qwen GGUF (151,669 tokens, 151,936 rows), read as `generate --model
    file.gguf` reads it, equals the original; a model over all rows never emits a placeholder row at any lam.
    (The model is the one written to the file: transformers' GGUF reader takes ~10 s per pass over such a
    vocabulary, and the conversion of the weights is checked on the tiny vocabulary above.)"""
    path, original, model = qwen3_file(tmp_path)
    tok = load_tokenizer(str(path))
    assert len(tok) == len(original) == 151_669 and model.config.vocab_size == 151_936
    assert tok.get_vocab() == original.get_vocab()
    assert not any(t.startswith("[PAD") for t in tok.get_vocab())
    assert tok.model_max_length == model.config.max_position_embeddings
    chat = [{"role": "user", "content": "What is 17 * 23? Think <think> about it."}]
    text = original.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
    assert tok(text)["input_ids"] == original(text)["input_ids"]
    assert top_token(model, tok) >= len(tok)
    inra = perturb_adapter(InRaModel.from_base(model, AdapterConfig(num_layers=1)), scale=0.5).eval()
    assert_never_generates(inra, tok, len(tok), LAMS)


@pytest.mark.parametrize(
    ("tokens", "types", "want"),
    [
        (["a", "b", "[PAD2]", "[PAD3]"], [NORMAL, NORMAL, UNUSED, UNUSED], (4, 2)),
        (["a", "[PAD1]", "b", "[PAD3]"], [NORMAL, UNUSED, NORMAL, UNUSED], (4, 3, (1,))),
        (["a", "b", "<dummy00001>"], None, (3, 2)),  # no token types in the file
        (["a", "spare", "b"], [NORMAL, NORMAL, UNUSED], (3, 2)),  # any UNUSED text
        # real tokens whatever their text: NORMAL/CONTROL `[PAD1]`, Gemma's CONTROL `<unused0>`, `<|PAD_TOKEN|>`
        (
            ["a", "[PAD1]", "<unused0>", "<|PAD_TOKEN|>"],
            [NORMAL, CONTROL, CONTROL, CONTROL],
            (4, 4),
        ),
        (["[PAD0]", "b"], [NORMAL, USER_DEFINED], (2, 2)),
    ],
)
def test_placeholder_layout(tokens, types, want):
    assert gguf_vocab.placeholder_layout(tokens, types) == gguf_vocab.PlaceholderLayout(*want)


def test_a_file_of_placeholders_only_is_refused():
    from flexrealign.core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="every one of the 2 tokens"):
        gguf_vocab.placeholder_layout(["[PAD0]", "[PAD1]"], [UNUSED, UNUSED])


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    from flexrealign.core.checkpoint import CheckpointError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(
        b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + (5).to_bytes(8, "little")
    )  # 5 keys, none there
    with pytest.raises(CheckpointError, match="cannot read the metadata of GGUF file"):
        gguf_vocab.read_gguf_vocab(bad)
    bad.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(CheckpointError, match="cannot read the metadata of GGUF file .*magic"):
        gguf_vocab.read_gguf_vocab(bad)

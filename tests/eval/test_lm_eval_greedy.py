"""lm-eval's loglikelihood scores the distribution generation samples from (issue 20): a greedy continuation
at lam 1.5 is greedy (`is_greedy`) on a model whose vocabulary has rows past the tokenizer, even when those
rows would win the unmasked argmax."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'flexrealign[lm-eval]')")

import torch  # noqa: E402

from flexrealign.core.inra import InRaModel  # noqa: E402
from flexrealign.core.tiny import tiny_model  # noqa: E402
from flexrealign.decoding.generation import generate  # noqa: E402
from flexrealign.eval.lm_eval_model import FlexRealignLM  # noqa: E402
from helpers import perturb_adapter, qwen3_tokenizer  # noqa: E402

LAM, PAD_ROWS, N = 1.5, 8, 6


def test_greedy_continuation_at_lam_1_5_is_greedy_with_padded_rows(tmp_path):
    tok = qwen3_tokenizer()
    base = tiny_model("qwen3", vocab_size=len(tok) + PAD_ROWS, hidden_size=32, num_layers=2)
    model = perturb_adapter(InRaModel.from_base(base), scale=0.5, seed=3).eval()
    context = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    cont = generate(model, tok, [context], lam=LAM, max_new_tokens=N, ignore_eos=True).token_ids[0]
    # Padded row k becomes 3x the lm_head row of the k-th greedy token: fusion is linear in lm_head rows, so
    # its fused logit is 3x the winner's, and it wins the unmasked argmax wherever the winner's is positive.
    with torch.no_grad():
        head = model.base.lm_head.weight  # (V, D)
        head[len(tok) : len(tok) + N] = 3 * head[torch.tensor(cont)]
    assert generate(model, tok, [context], lam=LAM, max_new_tokens=N, ignore_eos=True).token_ids[0] == cont
    ids = torch.tensor([context + cont])  # (1, T)
    raw = model(ids, lam=LAM).logits[0, len(context) - 1 : -1]  # (N, V) unmasked
    assert (raw.argmax(-1) >= len(tok)).any(), "the test must set up a padded row that wins unmasked"

    model.save_pretrained(tmp_path / "inra", tokenizer=tok)
    lm = FlexRealignLM(
        pretrained=str(tmp_path / "inra"), lam=LAM, device="cpu", dtype="float32", batch_size=1
    )
    text = (tok.decode(context), tok.decode(cont))
    [(ll, greedy)] = lm._loglikelihood_tokens([(text, context, cont)], disable_tqdm=True)
    assert greedy, "the greedy continuation at lam 1.5 must be greedy under lm-eval's loglikelihood"
    want = model(ids, lam=LAM).logits[0, len(context) - 1 : -1]
    want[:, len(tok) :] = float("-inf")
    want = want.log_softmax(-1).gather(-1, torch.tensor(cont).unsqueeze(-1)).sum()
    assert abs(ll - want.item()) < 1e-3

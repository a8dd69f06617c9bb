import math

import pytest
import torch

from flexrealign.core.fusion import as_lam_tensor, fuse_logits, fuse_paths, mask_untokenized, needed_paths


def test_fuse_matches_formula_per_row():
    ref, aligned = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    lam = torch.tensor([-1.0, 0.3, 2.5])
    fused = fuse_logits(ref, aligned, lam)
    for i, l in enumerate(lam.tolist()):
        torch.testing.assert_close(fused[i], l * aligned[i] + (1 - l) * ref[i])
    assert fused.dtype == torch.float32


def test_fuse_is_exact_at_zero_and_one_where_both_are_finite():
    ref, aligned = torch.randn(2, 7, dtype=torch.bfloat16), torch.randn(2, 7, dtype=torch.bfloat16)
    aligned[0, 3] = float("-inf")
    fused = fuse_logits(ref, aligned, torch.tensor([0.0, 1.0]))
    keep = torch.arange(7) != 3
    assert torch.equal(fused[0, keep], ref[0, keep].float())
    assert torch.equal(fused[1], aligned[1].float())
    assert torch.isneginf(fused[0, 3])  # impossible under the aligned model: impossible at lam = 0 too


LAMS = [-3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5, 2.0, 10.0]


@pytest.mark.parametrize("lam", LAMS)
def test_a_token_impossible_under_either_model_stays_impossible(lam):
    """Issue 11, kind 2. The example: -inf in both models (mask_untokenized) gave NaN at lam -0.5, 1.5, 2,
    and argmax picked it. Own inputs: -inf in one model only (+inf at lam < 0 or > 1 before), NaN inputs,
    bf16 inputs, a (B, T, V) batch with one lam per row."""
    inf = float("-inf")
    ref = torch.tensor([[1.0, 2.0, inf, inf, 0.5, math.nan, 3.0]])
    aligned = torch.tensor([[2.0, 1.0, inf, 4.0, inf, 0.0, 3.0]])
    masked = mask_untokenized(torch.cat([ref, aligned]), 6)  # the padded row 6 is -inf in both
    for r, a in [(ref, aligned), (masked[:1], masked[1:]), (ref.bfloat16(), aligned.bfloat16())]:
        fused = fuse_logits(r, a, lam)
        impossible = ~((r.float() > inf) & (a.float() > inf))
        assert not fused.isnan().any() and not fused.isposinf().any()
        assert torch.isneginf(fused[impossible]).all()
        assert torch.isfinite(fused[~impossible]).all()
        assert not impossible[0, fused[0].argmax()]
        assert not impossible[0, torch.multinomial(fused.softmax(-1), 50, replacement=True)].any()
    batch = torch.randn(3, 4, 9).masked_fill(torch.rand(3, 4, 9) < 0.3, inf)
    other = torch.randn(3, 4, 9).masked_fill(torch.rand(3, 4, 9) < 0.3, inf)
    fused = fuse_logits(batch, other, [lam, -lam, lam + 1])
    assert torch.equal(torch.isneginf(fused), torch.isneginf(batch) | torch.isneginf(other))


def test_extreme_lam_never_gives_nan():
    ref, aligned = torch.tensor([[5.0, 5.0, 3.0]]), torch.tensor([[5.0, 6.0, -3e38]])
    for lam in (1e38, -1e38, 3e38):
        fused = fuse_logits(ref, aligned, lam)
        assert torch.isfinite(fused).all() and torch.isfinite(fused.softmax(-1)).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, [0.5, math.nan]])
def test_non_finite_lam_is_rejected(bad):
    with pytest.raises(ValueError, match="finite"):
        fuse_logits(torch.zeros(2, 3), torch.zeros(2, 3), bad)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        fuse_logits(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="one value per row"):
        as_lam_tensor([0.1, 0.2, 0.3], 2)


def test_needed_paths():
    assert needed_paths(torch.tensor([0.0, 0.0])) == ("ref",)
    assert needed_paths(torch.tensor([1.0])) == ("aligned",)
    assert needed_paths(torch.tensor([0.0, 1.0])) == ("ref", "aligned")
    with pytest.raises(ValueError, match="only the ref path"):
        fuse_paths({"ref": torch.zeros(1, 3)}, torch.tensor([0.5]))


def test_padded_vocab_rows_are_never_sampled():
    logits = torch.zeros(2, 10)
    logits[:, 8:] = 100.0  # rows past the tokenizer would win
    masked = mask_untokenized(logits, 8)
    assert masked.argmax(-1).tolist() == [0, 0]
    assert torch.isinf(masked[:, 8:]).all()

import math

import pytest
import torch

from flexrealign.fusion import as_lam_tensor, fuse_logits, fuse_paths, mask_untokenized, needed_paths


def test_fuse_matches_formula_per_row():
    ref, aligned = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    lam = torch.tensor([-1.0, 0.3, 2.5])
    fused = fuse_logits(ref, aligned, lam)
    for i, l in enumerate(lam.tolist()):
        torch.testing.assert_close(fused[i], l * aligned[i] + (1 - l) * ref[i])
    assert fused.dtype == torch.float32


def test_fuse_is_exact_at_zero_and_one_even_with_inf():
    ref, aligned = torch.randn(2, 7, dtype=torch.bfloat16), torch.randn(2, 7, dtype=torch.bfloat16)
    aligned[0, 3] = float("-inf")
    fused = fuse_logits(ref, aligned, torch.tensor([0.0, 1.0]))
    assert torch.equal(fused[0], ref[0].float())
    assert torch.equal(fused[1], aligned[1].float())


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

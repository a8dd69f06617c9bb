import torch

from flexrealign.sampling import filter_top_k, filter_top_p, row_generators, sample_next


def test_top_k_per_row():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = filter_top_k(logits, torch.tensor([2, 0]))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert torch.equal(out[1], logits[1])


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_top_p(logits, torch.tensor([0.7]))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, torch.tensor([0.5]))).tolist() == [[True, False, False, False]]


def test_greedy_rows_and_sampling_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    gens = row_generators(0, 2)
    counts = torch.zeros(3)
    for _ in range(2000):
        out = sample_next(
            logits, torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), torch.tensor([1.0, 1.0]), gens
        )
        assert out[0] == 0
        counts[out[1]] += 1
    torch.testing.assert_close(counts / counts.sum(), torch.tensor([0.7, 0.2, 0.1]), atol=0.04, rtol=0)

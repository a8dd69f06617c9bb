import torch

from flexrealign.decoding.sampling import RowSampling, Sampler, filter_top_k, filter_top_p, row_generators


def test_top_k_per_row():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = filter_top_k(logits, torch.tensor([2, 0]), max_k=4)
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert torch.equal(out[1], logits[1])


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_top_p(logits, torch.tensor([0.7]))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, torch.tensor([0.5]))).tolist() == [[True, False, False, False]]


def test_greedy_rows_and_sampling_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    sampler = Sampler([RowSampling(), RowSampling(temperature=1.0)], row_generators(0, 2))
    counts = torch.zeros(3)
    for _ in range(2000):
        out = sampler.sample(logits)
        assert out[0] == 0
        counts[out[1]] += 1
    torch.testing.assert_close(counts / counts.sum(), torch.tensor([0.7, 0.2, 0.1]), atol=0.04, rtol=0)


def test_top_k_and_top_p_per_row_in_one_batch():
    """Each row keeps its own filters: k = 1 is greedy, top_p 0.5 keeps the top token alone, and a row
    without filters samples the whole distribution; an unseeded row draws from the global RNG."""
    logits = torch.log(torch.tensor([[0.4, 0.35, 0.25]] * 4))
    rows = [
        RowSampling(1.0, top_k=1),
        RowSampling(1.0, top_p=0.3),
        RowSampling(1.0),
        RowSampling(1.0, top_k=2),
    ]
    gens = row_generators(3, 4)
    gens[2] = None
    sampler = Sampler(rows, gens)
    seen = [set() for _ in rows]
    for _ in range(300):
        for i, t in enumerate(sampler.sample(logits.clone()).tolist()):
            seen[i].add(t)
    assert seen == [{0}, {0}, {0, 1, 2}, {0, 1}]


def test_seeded_rows_do_not_depend_on_their_neighbours():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    alone = Sampler([RowSampling(0.8, top_k=20)], row_generators(5, 1))
    mixed = Sampler([RowSampling(0.0), RowSampling(0.8, top_k=20), RowSampling(1.3, top_p=0.9)],
                    [None, *row_generators(5, 1), *row_generators(9, 1)])  # fmt: skip
    for _ in range(20):
        assert alone.sample(logits[1:2].clone()).item() == mixed.sample(logits.clone())[1].item()

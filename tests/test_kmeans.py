"""Exact 1-D k-means: equals a brute-force optimum, for every codebook size."""

from __future__ import annotations

import itertools

import pytest
import torch

from lcpress.linalg.kmeans import assign, lloyd, optimal_kmeans


def brute_force(values: list[float], k: int) -> float:
    """Least SSE over every split of the sorted values into k contiguous runs (optimal in 1-D)."""
    v = sorted(values)
    n = len(v)
    if k >= n:
        return 0.0
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = [0, *cuts, n]
        total = 0.0
        for a, b in zip(bounds, bounds[1:]):
            seg = v[a:b]
            mean = sum(seg) / len(seg)
            total += sum((t - mean) ** 2 for t in seg)
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_errors_equal_brute_force_for_every_k(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 11, (1,), generator=g))
    x = torch.randn(n, generator=g) * (seed + 1)
    if seed % 3 == 0:
        x = torch.round(x)  # repeated values: ties and fewer distinct values than entries
    solution = optimal_kmeans(x, 5)
    for k in range(1, 6):
        assert solution.errors[k - 1].item() == pytest.approx(brute_force(x.tolist(), k), abs=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_codebook_and_codes_reach_the_reported_error(k):
    x = torch.randn(500, generator=torch.Generator().manual_seed(k))
    solution = optimal_kmeans(x, k)
    codebook, codes = solution.codebook(k)
    assert codebook.numel() == k and codes.shape == (500,)
    error = float(((x.double() - codebook[codes]) ** 2).sum())
    assert error == pytest.approx(float(solution.errors[k - 1]), rel=1e-9)
    # an optimal solution assigns every value to its nearest entry
    assert torch.equal(assign(x.double(), torch.sort(codebook)[0]), codes)


def test_error_falls_as_the_codebook_grows():
    x = torch.randn(2000, generator=torch.Generator().manual_seed(1))
    errors = optimal_kmeans(x, 16).errors
    assert torch.all(errors[1:] <= errors[:-1])
    assert errors[-1] < errors[0] / 100


def test_exact_is_never_worse_than_lloyd():
    x = torch.cat([torch.randn(300), torch.randn(50) * 0.1 + 4, torch.randn(20) * 0.05 - 3])
    exact = float(optimal_kmeans(x, 4).errors[3])
    start = torch.tensor([-3.0, -2.9, -2.8, 5.0])  # a poor start
    codebook, codes = lloyd(x, start)
    assert float(((x.double() - codebook[codes]) ** 2).sum()) >= exact - 1e-9


def test_lloyd_never_increases_the_error_of_its_start():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    start = torch.tensor([-1.0, 0.1, 0.2, 2.0], dtype=torch.float64)
    before = float(((x.double() - start[assign(x.double(), start)]) ** 2).sum())
    codebook, codes = lloyd(x, start, iterations=5)
    assert float(((x.double() - codebook[codes]) ** 2).sum()) <= before + 1e-12


def test_bad_input():
    with pytest.raises(ValueError, match="max_k"):
        optimal_kmeans(torch.randn(4), 0)
    with pytest.raises(ValueError, match="empty"):
        optimal_kmeans(torch.randn(0), 2)

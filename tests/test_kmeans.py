"""Exact 1-D k-means: equals a brute-force optimum, for every codebook size."""

from __future__ import annotations

import itertools

import pytest
import torch

from lcpress.linalg.kmeans import assign, binned_kmeans, lloyd, optimal_kmeans


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


@pytest.mark.parametrize("draw", ["normal", "laplace", "mixture"])
def test_binned_solution_lies_between_the_exact_and_the_run_restricted_optimum(draw):
    """Lloyd's iterations only lower the error of the best boundaries on run ends, and no solution beats exact.

    How close to exact it lands at the default 65,536 runs is measured in benchmarks/kmeans_speed.py.
    """
    from lcpress.linalg.kmeans import _programme, _sorted

    g = torch.Generator().manual_seed(0)
    n, runs = 40_000, 2048
    x = {"normal": lambda: torch.randn(n, generator=g),
         "laplace": lambda: torch.sign(torch.randn(n, generator=g)) * -torch.log(torch.rand(n, generator=g)),
         "mixture": lambda: torch.cat([torch.randn(n // 2, generator=g) * 0.2, torch.randn(n // 2, generator=g) + 1]),
         }[draw]()
    exact, binned = optimal_kmeans(x, 16), binned_kmeans(x, 16, runs=runs)
    _, _, p1, p2, _ = _sorted(x, 16)
    restricted, _ = _programme(torch.linspace(0, n, runs + 1, dtype=torch.float64).round().long().unique(), p1, p2, 16)
    assert torch.all(binned.errors >= exact.errors * (1 - 1e-12))
    assert torch.all(binned.errors <= restricted * (1 + 1e-12))
    assert torch.all(binned.errors <= exact.errors * (1 + 1e-3))
    for k in (2, 5, 16):  # each size's codebook: its reported error, every value at its nearest entry
        codebook, codes = binned.codebook(k)
        assert float(((x.double() - codebook[codes]) ** 2).sum()) == pytest.approx(float(binned.errors[k - 1]), rel=1e-9)
        assert torch.equal(assign(x.double(), codebook), codes)


def test_binned_solution_with_one_value_per_run_is_the_exact_one():
    x = torch.randn(3000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(binned_kmeans(x, 8, runs=3000).errors, optimal_kmeans(x, 8).errors, rtol=1e-12, atol=0)


def test_binned_solution_with_long_runs_of_one_value_has_no_empty_entry():
    """Half the values exactly zero (a pruned layer quantized whole): runs cut inside the zeros, no NaN."""
    x = torch.cat([torch.zeros(20_000), torch.randn(20_000, generator=torch.Generator().manual_seed(1))])
    binned = binned_kmeans(x, 8, runs=1024)
    assert torch.isfinite(binned.errors).all()
    assert binned.errors[7] <= optimal_kmeans(x, 8).errors[7] * (1 + 1e-3)
    codebook, codes = binned.codebook(8)
    assert codebook.numel() == 8 and torch.isfinite(codebook).all() and torch.bincount(codes).min() > 0


def test_values_with_a_large_common_offset_keep_their_optimal_error():
    """Σx² − (Σx)²/n cancels when the values share an offset 10⁶ times their spread; about the median it does not."""
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(5000, generator=g, dtype=torch.float64) * 1e-3
    for offset in (1e4, 1e6):
        shifted, centred = optimal_kmeans(spread + offset, 4), optimal_kmeans(spread, 4)
        codebook, codes = shifted.codebook(4)
        true = float(((spread + offset - codebook[codes]) ** 2).sum())
        assert true == pytest.approx(float(centred.errors[3]), rel=1e-6)
        assert float(shifted.errors[3]) == pytest.approx(true, rel=1e-6)


@pytest.mark.parametrize("solve", [lambda x, k: optimal_kmeans(x, k).codebook(k),
                                   lambda x, k: lloyd(x, torch.linspace(-1, 1, k), 30)])
def test_a_codebook_holds_each_value_once_and_only_entries_in_use(solve):
    """Two distinct values with k = 8: a 2-entry codebook (1-bit codes), not seven copies of one value."""
    x = torch.tensor([-0.7] * 40 + [0.3] * 56, dtype=torch.float64)
    codebook, codes = solve(x, 8)
    assert codebook.tolist() == pytest.approx([-0.7, 0.3])
    assert torch.allclose(codebook[codes], x, rtol=0, atol=1e-12)

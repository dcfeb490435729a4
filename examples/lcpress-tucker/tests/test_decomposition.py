"""Tucker-2 linear algebra: exact errors, HOOI never worse than HOSVD, batching changes nothing."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lcpress_tucker", reason="install the package: pip install -e examples/lcpress-tucker")

from lcpress_tucker import decomposition  # noqa: E402
from lcpress_tucker.decomposition import compose, core_of, refine, refine_many  # noqa: E402


def _weight(out=12, cin=10, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, cin, k, k, generator=g, dtype=torch.float64)


def _direct_error(w, u_out, u_in):
    return float(((w - compose(u_out, core_of(w, u_out, u_in), u_in)) ** 2).sum())


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_reported_errors_are_the_true_errors(iterations):
    w = _weight()
    pairs = [(2, 3), (5, 5), (11, 9), (12, 10)]
    factors, errors = refine_many(w, [a for a, _ in pairs], [b for _, b in pairs], iterations)
    for (u_out, u_in), err, (a, b) in zip(factors, errors.tolist(), pairs):
        assert u_out.shape == (12, a) and u_in.shape == (10, b)
        torch.testing.assert_close(u_out.T @ u_out, torch.eye(a, dtype=torch.float64))
        assert err == pytest.approx(_direct_error(w, u_out, u_in), rel=1e-9, abs=1e-9)
    assert errors[-1] == pytest.approx(0.0, abs=1e-9)  # full ranks reproduce W


def test_hooi_never_increases_the_error():
    w = _weight(16, 12)
    outs, ins = [3, 6, 9], [2, 5, 8]
    by_iterations = [refine_many(w, outs, ins, it)[1] for it in (0, 1, 2, 5)]
    for before, after in zip(by_iterations, by_iterations[1:]):
        assert bool((after <= before + 1e-9).all())
    assert bool((by_iterations[-1] < by_iterations[0]).any())  # and it helps on a random weight


def test_exact_tucker_weight_is_recovered_at_its_ranks():
    g = torch.Generator().manual_seed(1)
    u_out = torch.linalg.qr(torch.randn(9, 3, generator=g, dtype=torch.float64))[0]
    u_in = torch.linalg.qr(torch.randn(7, 2, generator=g, dtype=torch.float64))[0]
    w = compose(u_out, torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64), u_in)
    _, _, errors = refine(w, torch.tensor([3, 2]), torch.tensor([2, 1]), iterations=2)
    assert errors[0] == pytest.approx(0.0, abs=1e-10) and errors[1] > 1e-3


def test_memory_bounded_batches_give_the_same_factors(monkeypatch):
    w = _weight(8, 8)
    outs, ins = [2, 4, 6, 3], [2, 3, 5, 7]
    whole, err_whole = refine_many(w, outs, ins, 2)
    monkeypatch.setattr(decomposition, "BATCH_VALUES", 1)  # one pair per batch
    split, err_split = refine_many(w, outs, ins, 2)
    torch.testing.assert_close(err_whole, err_split)
    for (a, b), (c, d) in zip(whole, split):
        torch.testing.assert_close(a @ a.T, c @ c.T)  # same subspaces (eigenvector signs may differ)
        torch.testing.assert_close(b @ b.T, d @ d.T)

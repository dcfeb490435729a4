"""Whitening: an output-space low-rank problem as a plain one.

Over inputs with second moment ``Σ = L Lᵀ`` (Cholesky), the output error of
``Δ`` is ``tr((W − Δ) Σ (W − Δ)ᵀ) = ‖(W − Δ) L‖²``. So the best rank-r Δ in
that metric is ``(W L)_r L⁻¹`` — the truncated SVD of the *whitened* weight
``W L``, mapped back — and its error is ``Σ_{i>r} s_i(W L)²``, exactly, from
the same spectrum that prices every rank (SVD-LLM's truncation-aware
whitening; Eckart–Young–Mirsky in the whitened space). Everything a
weight-space C step does with a spectrum — rank selection, budgets, every
cost model — then works unchanged on ``W L``.
"""

from __future__ import annotations

import torch


def whitening_factor(metric: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor L of a symmetric positive definite metric (float64).

    A metric that is only semi-definite in floating point (no damping, fewer
    inputs than dimensions) gets the smallest diagonal jitter that makes the
    factorization succeed, starting at 1e-12 of its mean eigenvalue.
    """
    metric = metric.to(torch.float64)
    factor, info = torch.linalg.cholesky_ex(metric)
    jitter = 1e-12 * max(float(torch.diagonal(metric).mean()), 1e-300)
    eye = torch.eye(metric.shape[0], dtype=metric.dtype, device=metric.device)
    while int(info):
        factor, info = torch.linalg.cholesky_ex(metric + jitter * eye)
        jitter *= 10
    return factor


def whiten(matrix: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``W L`` in float64: the matrix whose truncations are optimal in the metric ``L Lᵀ``."""
    return matrix.to(torch.float64) @ factor


def unwhiten(rows: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``B L⁻¹`` (a triangular solve, no inverse formed): the second factor of Δ = A·(B L⁻¹) in input space."""
    return torch.linalg.solve_triangular(factor, rows.to(torch.float64), upper=False, left=False)

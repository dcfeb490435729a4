"""Singular values and truncations for rank-selecting C steps.

Rank selection needs *all* singular values (to price every rank) but only the
top-r singular vectors of the chosen rank. An eigendecomposition of the smaller
Gram matrix in float64 gives both, several times faster than a full SVD, and
the truncation ``U_r (U_rᵀ W)`` never divides by a singular value, so it is an
exact orthogonal projection even where singular values are tiny. The error of
rank r, ``Σ_{i>r} s_i²``, is then exactly ``‖W − Δ‖²`` up to rounding.

Matrices of equal shape are decomposed in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from lcpress.linalg.finite import all_finite


@dataclass
class Spectrum:
    """Squared singular values (descending) and the singular vectors of the short side."""

    matrix: torch.Tensor
    squared: torch.Tensor  # float64, descending, length min(m, n)
    basis: torch.Tensor  # float64; left vectors if rows <= cols, else right vectors
    left: bool

    @property
    def full_rank(self) -> int:
        return self.squared.numel()

    def tail_errors(self) -> torch.Tensor:
        """``errors[r] = Σ_{i>r} s_i²`` for r = 0 … full rank (length full_rank + 1)."""
        tail = torch.flip(torch.cumsum(torch.flip(self.squared, [0]), 0), [0])
        return torch.cat([tail, tail.new_zeros(1)])

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation; A is m×r, B r×n.

        Each of the r directions carries √s_i on both sides (A = U√S, B = √S Vᵀ) rather than all of s_i on
        one: the realized thin layer's intermediate then has the size of the layer's outputs, where with
        A = U it can be √m times larger and overflow a float16 model's 65,504.
        """
        w = self.matrix.to(torch.float64)
        vectors = self.basis[:, :rank]
        if self.left:
            a, b = vectors, vectors.T @ w  # b's rows have norms s_i
            root = b.norm(dim=1).sqrt()
        else:
            a, b = w @ vectors, vectors.T  # a's columns have norms s_i
            root = a.norm(dim=0).sqrt()
        root = torch.where(root > 0, root, torch.ones_like(root))  # a zero direction stays as it is
        move = root if self.left else 1 / root  # A·diag(c), diag(1/c)·B: the same product
        a, b = a * move, b / move[:, None]
        return a.to(self.matrix.dtype), b.to(self.matrix.dtype)


def spectrum(matrix: torch.Tensor) -> Spectrum:
    """The :class:`Spectrum` of one matrix."""
    return spectra([matrix])[0]


def spectra(matrices: Sequence[torch.Tensor]) -> list[Spectrum]:
    """Spectra of many matrices; those of equal shape share one batched eigh."""
    if not all(map(all_finite, matrices)):
        raise ValueError("the weight holds NaN or infinite values; fix the model (or the L step's learning rate) first")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(matrices):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    out: list[Spectrum | None] = [None] * len(matrices)
    for (rows, cols), same in by_shape.items():
        per_matrix = 8 * (rows * cols + 2 * min(rows, cols) ** 2)  # float64 copy, Gram matrix, eigenvectors
        step = max(1, BATCH_BYTES // per_matrix)
        left = rows <= cols
        for start in range(0, len(same), step):  # a bounded stack at a time: all of BERT's at once is 2.7× its weights
            indices = same[start:start + step]
            batch = torch.stack([matrices[i].detach().to(torch.float64) for i in indices])
            gram = batch @ batch.transpose(1, 2) if left else batch.transpose(1, 2) @ batch
            del batch
            values, vectors = torch.linalg.eigh(gram)
            values = torch.flip(values.clamp_min(0), [1])
            vectors = torch.flip(vectors, [2])
            for j, i in enumerate(indices):
                out[i] = Spectrum(matrices[i].detach(), values[j], vectors[j], left)
    return out  # type: ignore[return-value]


#: The most bytes one batched eigendecomposition stacks (the CPU's eigh works matrix by matrix anyway).
BATCH_BYTES = 64 * 2**20

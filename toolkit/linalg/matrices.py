"""Matricizations: a weight tensor as the matrix a low-rank scheme factorizes, and back.

``channel`` (out, in·kh·kw), ``spatial`` (in·kh, out·kw) and ``input``
(out·kh·kw, in) for convolutions, and block-interleaved reshapes ``(m·p, n/p)`` for additive
combinations. Every one is a plain reshape/permute, so it is exact and
differentiable.
"""

from __future__ import annotations

from typing import Literal

import torch


Shape = Literal["channel", "spatial", "input"]


def to_matrix(w: torch.Tensor, shape: Shape = "channel") -> torch.Tensor:
    """The matrix a low-rank factorization of ``w`` approximates.

    ``channel``: (out, in·kh·kw) — factors realize as a kh×kw conv in→r then a 1×1 conv.
    ``spatial``: (in·kh, out·kw) — factors realize as a kh×1 conv in→r then a 1×kw conv.
    ``input``: (out·kh·kw, in) — factors realize as a 1×1 conv in→r then the kh×kw conv r→out.
    Matrices pass through unchanged.
    """
    if w.dim() == 2:
        return w
    if w.dim() != 4:
        raise ValueError(f"cannot matricize a {w.dim()}-D tensor of shape {tuple(w.shape)}")
    out, cin, kh, kw = w.shape
    if shape == "channel":
        return w.reshape(out, cin * kh * kw)
    if shape == "input":  # W[o, i, y, x] = Σ_r U[(o, y, x), r] · V[r, i]
        return w.permute(0, 2, 3, 1).reshape(out * kh * kw, cin)
    # W[o, i, y, x] = Σ_r V[(i, y), r] · H[r, (o, x)]
    return w.permute(1, 2, 0, 3).reshape(cin * kh, out * kw)


def from_matrix(m: torch.Tensor, like: tuple[int, ...], shape: Shape = "channel") -> torch.Tensor:
    """Inverse of :func:`to_matrix` for a tensor of shape ``like``."""
    if len(like) == 2:
        return m.reshape(like)
    out, cin, kh, kw = like
    if shape == "channel":
        return m.reshape(like)
    if shape == "input":
        return m.reshape(out, kh, kw, cin).permute(0, 3, 1, 2)
    return m.reshape(cin, kh, out, kw).permute(2, 0, 1, 3)


def reshape_matrix(m: torch.Tensor, rows_factor: int) -> torch.Tensor:
    """(m, n) → (m·p, n/p): row i·p + j holds columns j, p+j, 2p+j … of row i.

    Block-interleaved reshape of the additive-combination papers: each new row
    gathers a strided slice of an old row, so a low-rank part in this view
    captures structure a plain low-rank part misses.
    """
    rows, cols = m.shape
    if cols % rows_factor:
        raise ValueError(f"cannot reshape ({rows}, {cols}) by {rows_factor}: {cols} is not divisible")
    return m.reshape(rows, cols // rows_factor, rows_factor).transpose(1, 2).reshape(rows * rows_factor, -1)


def unreshape_matrix(m: torch.Tensor, rows_factor: int) -> torch.Tensor:
    """Inverse of :func:`reshape_matrix`."""
    rows = m.shape[0] // rows_factor
    return m.reshape(rows, rows_factor, -1).transpose(1, 2).reshape(rows, -1)

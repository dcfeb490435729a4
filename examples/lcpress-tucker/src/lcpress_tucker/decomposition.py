"""Tucker-2 decomposition of a convolution weight: the linear algebra, no lcpress.

A conv weight ``W`` (out × in × kh × kw) is approximated as

    W[o, i, :, :] ≈ Σ_{a,b} U_out[o, a] · G[a, b, :, :] · U_in[i, b]

with orthonormal factors ``U_out`` (out × r_out), ``U_in`` (in × r_in) and a
core ``G`` (r_out × r_in × kh × kw) — the spatial modes are not decomposed,
so the layer becomes a 1×1 conv in→r_in, a kh×kw conv r_in→r_out and a 1×1
conv r_out→out.

For fixed factors the best core is the projection ``G = W ×_out U_outᵀ ×_in
U_inᵀ``, and because the factors are orthonormal the error is exactly
``‖W‖² − ‖G‖²``. The factors start from the truncated HOSVD (leading
eigenvectors of each mode's Gram matrix) and are refined by HOOI
(alternating: the best U_out for the current U_in, then the best U_in for
that U_out), which never increases the error.

Many rank pairs are refined at once: factors are kept at full width with the
columns beyond each pair's rank zeroed, so every pair's Gram matrices have the
same shape and one batched ``eigh`` serves them all.
"""

from __future__ import annotations

import torch

#: Rank pairs refined per batch are capped so a batch's largest tensor stays under this many values.
BATCH_VALUES = 1 << 22


def as_modes(w: torch.Tensor) -> torch.Tensor:
    """(out, in, kh·kw) view of a conv weight, in float64."""
    return w.detach().to(torch.float64).reshape(w.shape[0], w.shape[1], -1)


def _leading(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a (batch of) symmetric matrices, largest eigenvalue first."""
    _, vectors = torch.linalg.eigh(gram)
    return vectors.flip(-1)


def mode_bases(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HOSVD bases: (U_out out×out, U_in in×in), leading directions first."""
    m = as_modes(w)
    return _leading(torch.einsum("oik,qik->oq", m, m)), _leading(torch.einsum("oik,ojk->ij", m, m))


def _mask(width: int, ranks: torch.Tensor) -> torch.Tensor:
    """(P, 1, width) with ones in the first ``ranks[p]`` columns."""
    return (torch.arange(width).unsqueeze(0) < ranks.unsqueeze(1)).to(torch.float64).unsqueeze(1)


def refine(w: torch.Tensor, out_ranks: torch.Tensor, in_ranks: torch.Tensor, iterations: int,
           bases: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HOSVD + ``iterations`` HOOI sweeps for P rank pairs at once.

    :returns: ``(U_out, U_in, errors)``: zero-padded factors of shape (P, out, out)
        and (P, in, in), and the exact squared errors ``‖W − Δ‖²`` (P,), float64.
    """
    m = as_modes(w)
    n_out, n_in = m.shape[:2]
    u_out, u_in = bases if bases is not None else mode_bases(w)
    pairs = int(out_ranks.numel())
    mask_out, mask_in = _mask(n_out, out_ranks), _mask(n_in, in_ranks)
    left = u_out.expand(pairs, -1, -1) * mask_out
    right = u_in.expand(pairs, -1, -1) * mask_in
    for _ in range(iterations):
        y = torch.einsum("oik,pib->pobk", m, right)
        left = _leading(torch.einsum("pobk,pqbk->poq", y, y)) * mask_out
        z = torch.einsum("oik,poa->paik", m, left)
        right = _leading(torch.einsum("paik,pajk->pij", z, z)) * mask_in
    core = torch.einsum("oik,poa,pib->pabk", m, left, right)
    errors = (m.square().sum() - core.square().sum(dim=(1, 2, 3))).clamp_min(0)
    return left, right, errors


def refine_many(w: torch.Tensor, out_ranks: list[int], in_ranks: list[int],
                iterations: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """:func:`refine` for any number of rank pairs, in memory-bounded batches.

    :returns: the factors of each pair trimmed to its ranks (U_out out×r_out,
        U_in in×r_in, float64), and the exact errors (float64).
    """
    n_out, n_in = w.shape[:2]
    per_pair = n_out * n_in * max(1, w[0, 0].numel()) + n_out * n_out + n_in * n_in
    chunk = max(1, BATCH_VALUES // per_pair)
    bases = mode_bases(w)
    factors: list[tuple[torch.Tensor, torch.Tensor]] = []
    errors = []
    for start in range(0, len(out_ranks), chunk):
        outs = torch.tensor(out_ranks[start:start + chunk])
        ins = torch.tensor(in_ranks[start:start + chunk])
        left, right, err = refine(w, outs, ins, iterations, bases)
        factors += [(left[p, :, :a], right[p, :, :b]) for p, (a, b) in enumerate(zip(outs.tolist(), ins.tolist()))]
        errors.append(err)
    return factors, torch.cat(errors) if errors else torch.zeros(0, dtype=torch.float64)


def core_of(w: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """The optimal core (r_out, r_in, kh, kw) for orthonormal factors, in float64."""
    core = torch.einsum("oik,oa,ib->abk", as_modes(w), u_out, u_in)
    return core.reshape(u_out.shape[1], u_in.shape[1], *w.shape[2:])


def compose(u_out: torch.Tensor, core: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """Δ = G ×_out U_out ×_in U_in, a weight of shape (out, in, kh, kw)."""
    return torch.einsum("oa,abhw,ib->oihw", u_out, core, u_in)

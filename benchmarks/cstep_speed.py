"""C-step speed: rank selection for every weight of a ResNet-50, lcpress vs a NumPy reference.

The reference is the straightforward per-layer way of the LC toolkit: a full
float64 NumPy SVD of each weight matrix, a scan of ``α·C(r) + μ/2·Σ_{i>r} s_i²``
over every rank, and the truncated factors of the winner. lcpress runs its
real C-step path: the low-rank scheme's batched candidate search (one float64
eigendecomposition of the smaller Gram matrix per group of equal shapes) and
the core's selection. Both must choose the same ranks; the table reports the
time ratio, measured in one process.

    python benchmarks/cstep_speed.py            # 54 ResNet-50 weight shapes
    python benchmarks/cstep_speed.py --quick    # a few shapes, for smoke tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lcpress import Dense, LayerSpec
from lcpress import get_registry
from lcpress import CStepContext

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish, timed  # noqa: E402


def resnet50_weight_shapes() -> list[tuple[int, ...]]:
    """The 54 conv/linear weight shapes of torchvision's ResNet-50, in order."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width, width, 3, 3), (width * 4, width, 1, 1)]
            if b == 0:
                shapes.append((width * 4, inplanes, 1, 1))
            inplanes = width * 4
    shapes.append((1000, 2048))
    return shapes


def make_weight(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A random weight with a power-law spectrum, like trained layers have."""
    m, n = shape[0], int(np.prod(shape[1:]))
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=generator))
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -0.8
    return ((u * s) @ v.T).reshape(shape)


def params_cost(m: int, n: int, rank: int | None) -> float:
    return float(m * n if rank is None else rank * (m + n))


def reference(weights: list[torch.Tensor], alpha: float, mu: float, multiple: int) -> list[int | None]:
    """Per-layer NumPy SVD + scan; returns the chosen rank (None = dense)."""
    chosen: list[int | None] = []
    for w in weights:
        mat = w.reshape(w.shape[0], -1).numpy().astype(np.float64)
        m, n = mat.shape
        u, s, vt = np.linalg.svd(mat, full_matrices=False)
        tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
        best_rank, best = None, alpha * params_cost(m, n, None)
        for r in range(multiple, len(s), multiple):
            objective = alpha * params_cost(m, n, r) + mu / 2 * tail[r]
            if objective < best:
                best_rank, best = r, objective
        if best_rank is not None:
            _factors = (u[:, :best_rank] * s[:best_rank], vt[:best_rank])
        chosen.append(best_rank)
    return chosen


def lcpress_cstep(weights: list[torch.Tensor], alpha: float, mu: float, multiple: int) -> list[int | None]:
    """lcpress's C step: batched candidates, core selection, factors of the winner."""
    scheme_cls = get_registry().scheme("low_rank")
    cost = get_registry().cost_model("params")()
    scheme = scheme_cls(scheme_cls.Options(rank_multiple=multiple, shape="channel"))  # the reference factorizes (out, in·k·k)
    contexts = []
    for w in weights:
        m, n = w.shape[0], int(np.prod(w.shape[1:]))
        contexts.append(CStepContext(mu=mu, cost_model=cost, spec=LayerSpec("linear", n, m, (1, n), bias=False)))
    found = scheme.candidates_many(list(zip(weights, contexts)))
    chosen: list[int | None] = []
    for w, ctx, cands in zip(weights, contexts, found):
        ctx.candidates = cands
        costs = cost.costs(ctx.spec, cands.forms)
        ctx.choice = int(torch.argmin(2 * alpha / mu * costs + cands.errors.double()))  # the core's α rule
        if isinstance(ctx.chosen_form(), Dense):  # the core keeps a dense layer itself: nothing to factor
            chosen.append(None)
            continue
        chosen.append(scheme.form(scheme.compress(w, ctx)).rank)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small shapes only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cstep_speed.md"))
    args = parser.parse_args()
    shapes = resnet50_weight_shapes()
    if args.quick:
        shapes = shapes[:6]
    generator = torch.Generator().manual_seed(0)
    weights = [make_weight(s, generator) for s in shapes]
    mu = 1.0
    rows = []
    for multiple in (1, 8):
        for alpha in (1e-6, 1e-5):
            # warm-up both paths once (BLAS thread pools, allocator)
            reference(weights[:2], alpha, mu, multiple)
            lcpress_cstep(weights[:2], alpha, mu, multiple)
            t_ref, ranks_ref = timed(reference, weights, alpha, mu, multiple)
            t_lc, ranks_lc = timed(lcpress_cstep, weights, alpha, mu, multiple)
            compressed = sum(r is not None for r in ranks_lc)
            rows.append((multiple, alpha, t_ref, t_lc, t_ref / t_lc, ranks_ref == ranks_lc, compressed))
    header = "| rank_multiple | α | NumPy SVD + scan (s) | lcpress C step (s) | speed-up | same ranks | layers compressed |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for multiple, alpha, t_ref, t_lc, ratio, same, compressed in rows:
        lines.append(f"| {multiple} | {alpha:g} | {t_ref:.2f} | {t_lc:.2f} | {ratio:.1f}× | {'yes' if same else 'NO'} "
                     f"| {compressed}/{len(weights)} |")
    machine = f"{describe()}, numpy {np.__version__}"
    publish(f"C-step speed: rank selection over {len(weights)} ResNet-50 weight shapes",
            f"Machine: {machine}. Command: `python benchmarks/cstep_speed.py`.", lines, args.out, args.quick)
    if not all(r[5] for r in rows):
        raise SystemExit("the two implementations chose different ranks")


if __name__ == "__main__":
    main()

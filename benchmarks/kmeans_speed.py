"""Quantization C step: exact 1-D k-means vs the binned-and-refined solver vs Lloyd, on large weight tensors.

The adaptive codebook's C step is 1-D k-means of a layer's weights. The exact
dynamic programme (``solver: exact``) costs ~k·log2(n) vectorized passes over
the n sorted values: half a minute for one 3×3 conv of ResNet-18's last
stage. ``solver: auto`` (the default) keeps it up to 524,288 values and uses
``binned_kmeans`` above: the same programme over 65,536 equal-count runs of
the sorted values, then Lloyd's iterations over all of them. This script
times the three solvers on weight-sized vectors and reports how far each
lands above the exact optimum, for every codebook size 1…k at once (the
size-selecting C step prices all of them). Lloyd is the LC toolkit's way:
30 iterations from evenly spaced quantiles, one size at a time.

    python benchmarks/kmeans_speed.py            # 0.59, 1.18 and 2.36 million values, k = 16
    python benchmarks/kmeans_speed.py --quick    # small vectors, for smoke tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lcpress.linalg import binned_kmeans, lloyd, optimal_kmeans

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish, timed  # noqa: E402


def draw(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Weight-like values: Gaussian, or Laplace (heavier tails, as trained weights often have)."""
    if kind == "normal":
        return torch.randn(n, generator=generator) * 0.02
    signs = torch.sign(torch.rand(n, generator=generator) - 0.5)
    return signs * -torch.log(torch.rand(n, generator=generator)) * 0.02


def lloyd_errors(x: torch.Tensor, k_max: int) -> torch.Tensor:
    """Lloyd from quantiles for every size 1 … k_max (what a size-selecting C step would need)."""
    values = x.double()
    errors = []
    for k in range(1, k_max + 1):
        start = torch.quantile(values[:: max(1, values.numel() // 100_000)], (torch.arange(k, dtype=torch.float64) + 0.5) / k)
        codebook, codes = lloyd(values, start, 30)
        errors.append(float(((values - codebook[codes]) ** 2).sum()))
    return torch.tensor(errors, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small vectors only")
    parser.add_argument("--k", type=int, default=16, help="largest codebook size")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kmeans_speed.md"))
    args = parser.parse_args()
    sizes = (20_000, 40_000) if args.quick else (589_824, 1_179_648, 2_359_296)  # 256·256·9, 256·512·9, 512·512·9
    runs = 1024 if args.quick else 1 << 16
    generator = torch.Generator().manual_seed(0)
    lines = ["| values | draw | exact (s) | binned + Lloyd (s) | speed-up | its largest gap to exact | "
             "Lloyd from quantiles, 30 it. (s) | its largest gap |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        for kind in ("normal", "laplace"):
            x = draw(kind, n, generator)
            t_exact, exact = timed(optimal_kmeans, x, args.k)
            t_binned, binned = timed(binned_kmeans, x, args.k, runs)
            t_lloyd, lloyd_err = timed(lloyd_errors, x, args.k)
            gap = float(((binned.errors - exact.errors) / exact.errors).max())
            lloyd_gap = float(((lloyd_err - exact.errors) / exact.errors).max())
            lines.append(f"| {n:,} | {kind} | {t_exact:.2f} | {t_binned:.2f} | {t_exact / t_binned:.0f}× | "
                         f"{gap:.1e} | {t_lloyd:.2f} | {lloyd_gap:.1e} |")
    publish(f"Quantization C step: 1-D k-means for every codebook size up to {args.k}",
            f"Machine: {describe()}. Command: `python benchmarks/kmeans_speed.py`. Gaps are relative: "
            f"(error − exact error) / exact error, the largest over sizes 1…{args.k}; the binned solver uses "
            f"{runs:,} runs.", lines, args.out, args.quick)


if __name__ == "__main__":
    main()

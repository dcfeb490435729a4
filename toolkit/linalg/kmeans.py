"""Optimal k-means in one dimension, for codebook quantization C steps.

In 1-D the clusters of an optimal k-means solution are contiguous runs of the
sorted data, so the exact optimum is a dynamic programme over split points:
``D_k[j] = min_i D_{k-1}[i] + sse(i, j)`` for the first ``j`` sorted values,
with ``sse`` from prefix sums. The optimal split ``i`` is monotone in ``j``,
so each layer of the programme is solved by divide and conquer; all
midpoints of one recursion depth are evaluated together as one vectorized
torch computation, so a layer costs O(n log n) work in ~log2(n) tensor
passes, not a Python loop over n. One run yields the exact optimal error
for *every* codebook size up to K, which is what a codebook-size-selecting
C step needs.

:func:`lloyd` is the classic alternative (the LC toolkit's): warm-started from
a previous codebook it never increases the error, but it finds a local
optimum only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeans1D:
    """Optimal codebooks of every size 1…K for one vector.

    :ivar errors: ``errors[k-1]`` is the optimal sum of squared errors with k entries.
    """

    sorted_values: torch.Tensor  # float64, ascending
    order: torch.Tensor  # indices that sort the original vector
    errors: torch.Tensor  # float64, length K
    splits: list[torch.Tensor]  # splits[k][j]: optimal start of the last cluster of the first j values, k+1 clusters

    def codebook(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codebook, codes)`` of the optimal k-entry solution, codes in the original order."""
        n = self.sorted_values.numel()
        k = min(k, len(self.splits))
        bounds = [n]
        for level in range(k - 1, 0, -1):
            bounds.append(int(self.splits[level][bounds[-1]]))
        bounds.append(0)
        bounds = bounds[::-1]
        starts = torch.tensor(bounds[:-1])
        ends = torch.tensor(bounds[1:])
        keep = ends > starts  # empty clusters only when there are fewer distinct values than k
        starts, ends = starts[keep], ends[keep]
        prefix = torch.cat([self.sorted_values.new_zeros(1), torch.cumsum(self.sorted_values, 0)])
        centres = (prefix[ends] - prefix[starts]) / (ends - starts).to(torch.float64)
        sorted_codes = torch.repeat_interleave(torch.arange(len(starts)), ends - starts)
        codes = torch.empty_like(sorted_codes)
        codes[self.order] = sorted_codes
        return centres, codes


def optimal_kmeans(x: torch.Tensor, max_k: int) -> KMeans1D:
    """Exact k-means of the values of ``x`` for every k ≤ ``max_k`` (see the module docstring)."""
    if max_k < 1:
        raise ValueError(f"max_k must be at least 1, got {max_k}")
    values, order = torch.sort(x.detach().reshape(-1).to(torch.float64).cpu())
    n = values.numel()
    if n == 0:
        raise ValueError("cannot quantize an empty tensor")
    p1 = torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])
    p2 = torch.cat([values.new_zeros(1), torch.cumsum(values * values, 0)])

    def sse(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        count = (j - i).to(torch.float64)
        s = p1[j] - p1[i]
        return (p2[j] - p2[i] - s * s / count).clamp_min(0)

    ends = torch.arange(n + 1)
    previous = torch.zeros(n + 1, dtype=torch.float64)
    previous[1:] = sse(torch.zeros(n, dtype=torch.long), ends[1:])
    errors = [float(previous[n])]
    splits = [torch.zeros(n + 1, dtype=torch.long)]
    last = min(max_k, n)
    for k in range(2, last + 1):
        if k == last:  # the last layer is needed at j = n only: one vectorized pass
            cand = torch.arange(k - 1, n)
            cost = previous[cand] + sse(cand, torch.full_like(cand, n))
            split = torch.zeros(n + 1, dtype=torch.long)
            split[n] = cand[int(torch.argmin(cost))]
            errors.append(float(cost.min()))
        else:
            previous, split = _dp_layer(previous, k, n, sse)
            errors.append(float(previous[n]))
        splits.append(split)
    errors += [0.0] * (max_k - len(errors))  # more entries than values: exact
    return KMeans1D(values, order, torch.tensor(errors, dtype=torch.float64), splits)


def _dp_layer(previous: torch.Tensor, k: int, n: int, sse) -> tuple[torch.Tensor, torch.Tensor]:
    """``D_k[j] = min_{k-1 ≤ i < j} D_{k-1}[i] + sse(i, j)`` for j = k … n, by vectorized divide and conquer."""
    best = torch.full((n + 1,), float("inf"), dtype=torch.float64)
    best[:k] = previous[:k]  # fewer values than clusters: nothing to add
    split = torch.zeros(n + 1, dtype=torch.long)
    # intervals of j still to solve, with the range their optimal split lies in
    lo = torch.tensor([k])
    hi = torch.tensor([n])
    opt_lo = torch.tensor([k - 1])
    opt_hi = torch.tensor([n - 1])
    while lo.numel():
        mid = (lo + hi) // 2
        last = torch.minimum(mid - 1, opt_hi)
        counts = last - opt_lo + 1
        seg = torch.repeat_interleave(torch.arange(len(mid)), counts)
        offsets = torch.cumsum(counts, 0) - counts
        cand = opt_lo[seg] + torch.arange(int(counts.sum())) - offsets[seg]
        cost = previous[cand] + sse(cand, mid[seg])
        mins = torch.full((len(mid),), float("inf"), dtype=torch.float64).scatter_reduce(0, seg, cost, "amin")
        at_min = cost <= mins[seg]
        arg = torch.full((len(mid),), n, dtype=torch.long).scatter_reduce(0, seg[at_min], cand[at_min], "amin")
        best[mid] = mins
        split[mid] = arg
        left = lo <= mid - 1
        right = mid + 1 <= hi
        lo, hi, opt_lo, opt_hi = (
            torch.cat([lo[left], (mid + 1)[right]]),
            torch.cat([(mid - 1)[left], hi[right]]),
            torch.cat([opt_lo[left], arg[right]]),
            torch.cat([arg[left], opt_hi[right]]),
        )
    return best, split


def lloyd(x: torch.Tensor, codebook: torch.Tensor, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from ``codebook``; returns ``(codebook, codes)``. The error never increases."""
    values = x.detach().reshape(-1).to(torch.float64)
    centres = torch.sort(codebook.detach().to(torch.float64, copy=True).reshape(-1).to(values.device))[0]
    codes = assign(values, centres)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, codes, values)
        counts = torch.zeros_like(centres).index_add_(0, codes, torch.ones_like(values))
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # an empty entry stays put
        updated = torch.sort(updated)[0]
        new_codes = assign(values, updated)
        converged = torch.equal(new_codes, codes) and torch.equal(updated, centres)
        centres, codes = updated, new_codes
        if converged:
            break
    return centres, codes


def assign(values: torch.Tensor, sorted_codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of an ascending codebook for every value."""
    if sorted_codebook.numel() == 1:
        return torch.zeros(values.numel(), dtype=torch.long, device=values.device)
    midpoints = (sorted_codebook[1:] + sorted_codebook[:-1]) / 2
    return torch.bucketize(values.reshape(-1), midpoints)

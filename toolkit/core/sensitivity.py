"""Measured layer sensitivity: how much the run's metric drops with one layer compressed alone.

Why: a budget shared by weight error (or output error) treats an error of
10% alike in every layer, but layers differ in how much of that error
reaches the loss. AIMET's greedy search scores each layer's candidates by the
evaluation metric of the model with that layer alone compressed, and shares
the budget by those scores. With ``sensitivity: measured`` lcpress does the
same inside the LC C step: the first C step under a target measures, per
layer, the metric drop at a few of its candidates (``sensitivity_points``,
spread over its cost range), and every selection from then on reads each
candidate's drop off that layer's curve, interpolated in relative error.

That keeps the measurement to ``points × layers`` evaluations, once, and
keeps the C step consistent as the L steps move the weights: a candidate's
relative error moves with them, and its drop along the curve. Budgets,
allocations (``sum`` adds the drops, ``minmax`` bounds the largest — AIMET's
rule) and every cost model work unchanged, since the selection only sees a
different error per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from lcpress.errors import LcpressError

#: added to every interpolated drop, times the candidate's relative error: among candidates whose measured drops
#: are equal (the metric has a resolution, often one evaluation sample), the one of least error is preferred
TIE_BREAK = 1e-6


@dataclass
class Curve:
    """One layer's measured metric drop against relative error, from the dense layer (0, 0) up."""

    errors: list[float]  # relative errors ‖W − Δ‖²/‖W‖² measured, ascending, the first 0
    drops: list[float]  # the metric drop at each: non-decreasing, ≥ 0

    def __call__(self, errors: torch.Tensor) -> torch.Tensor:
        """The drop at each relative error: linear between measured points, proportional to error past the last."""
        e = errors.double().cpu()
        xs, ys = torch.tensor(self.errors, dtype=torch.float64), torch.tensor(self.drops, dtype=torch.float64)
        right = torch.searchsorted(xs, e.clamp(max=float(xs[-1])), right=False).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
        inside = y0 + (y1 - y0) * (e - x0) / (x1 - x0).clamp_min(1e-300)
        beyond = ys[-1] * e / max(float(xs[-1]), 1e-300)  # past the cheapest candidate measured
        drop = torch.where(e > xs[-1], beyond, inside)
        return drop + TIE_BREAK * e

    def to_dict(self) -> dict[str, list[float]]:
        return {"errors": list(self.errors), "drops": list(self.drops)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Curve:
        return cls([float(x) for x in doc["errors"]], [float(y) for y in doc["drops"]])


def curve(errors: Sequence[float], drops: Sequence[float]) -> Curve:
    """The curve through measured (relative error, drop) points, made monotone.

    A drop below zero (the compressed layer scored better) is noise at the
    metric's resolution and reads as 0; a drop smaller than one at a smaller
    error is raised to it, so more error never looks cheaper to the selection.
    """
    points = sorted(zip(errors, drops))
    xs, ys, worst = [0.0], [0.0], 0.0
    for x, y in points:
        worst = max(worst, float(y), 0.0)
        if x > xs[-1]:
            xs.append(float(x))
            ys.append(worst)
        else:  # the same error measured twice: keep the larger drop
            ys[-1] = max(ys[-1], worst)
    return Curve(xs, ys)


def probes(costs: torch.Tensor, errors: torch.Tensor, points: int) -> list[int]:
    """Which of a layer's candidates to measure: ``points`` of them, spread over its cost range.

    Only candidates of least error for their cost (the frontier) are worth
    measuring; the j-th probe is the frontier's best candidate costing at most
    ``j/points`` of the way from the cheapest to the dense layer's cost, so the
    cheapest candidate is always measured. Candidates of zero error (the
    dense layer) drop nothing and are not measured.
    """
    c, e = costs.double().cpu(), errors.double().cpu()
    order = sorted(range(len(c)), key=lambda i: (float(c[i]), float(e[i])))
    frontier, best = [], float("inf")
    for i in order:
        if float(e[i]) < best:
            frontier.append(i)
            best = float(e[i])
    high = float(c[frontier[-1]])  # the dense layer's cost (the frontier ends at the first error of zero)
    frontier = [i for i in frontier if float(e[i]) > 0]
    if not frontier:
        return []
    low = float(c[frontier[0]])
    chosen: list[int] = []
    for j in range(points):
        limit = low + (high - low) * j / points
        fits = [i for i in frontier if float(c[i]) <= limit * (1 + 1e-12)]
        if fits and fits[-1] not in chosen:
            chosen.append(fits[-1])
    return chosen


def measure(candidates: Sequence[int], errors: torch.Tensor, baseline: float,
            metric_at: Callable[[int], float]) -> tuple[Curve, list[tuple[float, float]]]:
    """One layer's curve: the metric with each probed candidate in place, against ``baseline`` (nothing compressed).

    Returns the curve and the raw (relative error, drop) points, for the run's log.
    """
    raw = []
    for j in candidates:
        value = float(metric_at(j))
        for score, when in ((baseline, "before compressing"), (value, "with a layer compressed")):
            if not math.isfinite(score):
                raise LcpressError(f"sensitivity: measured: the metric is {score} {when}; make eval_fn return a "
                                   f"finite score (higher is better), or use sensitivity: error")
        raw.append((float(errors[j]), baseline - value))
    return curve([x for x, _ in raw], [y for _, y in raw]), raw

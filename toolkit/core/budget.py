"""Choosing forms: per-layer α trade-off, or one global budget by bisection.

Every selecting C step minimises, per layer, ``α·C(form) + μ/2·error(form)``.
Dividing by μ/2 shows that only ``t = 2α/μ`` matters, and the total cost of
the chosen forms falls as ``t`` grows. A global budget ("a quarter of the
FLOPs") is met by bisection on ``log t`` shared by every layer of the group:
the smallest ``t`` whose choices fit the budget. This is the Lagrangian
relaxation of ``min Σ error  s.t.  Σ cost ≤ budget``, solved exactly over the
discrete candidate sets, up to one candidate step per layer; what that choice
leaves of the budget is then spent greedily (:func:`fill`), so the choice is
never worse than the relaxation's and uses the budget it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

#: Errors below this share of ‖w‖² are float rounding: an exactly rank-4 layer's errors past rank 4 are ~1e-13·‖W‖².
ROUNDING = 1e-10


@dataclass
class Choice:
    """What a group's selection decided."""

    indices: list[int]
    trade_off: float  # t = 2α/μ actually used (the error level ε for min-max allocation)
    total_cost: float
    budget: float | None = None
    dense_cost: float | None = None  # the group's cost with every layer dense

    @property
    def feasible(self) -> bool:
        return self.budget is None or self.total_cost <= self.budget * (1 + 1e-9)


def without_rounding(errors: torch.Tensor, scale: float) -> torch.Tensor:
    """``errors`` with those within rounding of ``scale`` (the error of Δ = 0, ‖w‖²) set to 0.

    Otherwise a budget is spent removing rounding: the forms past an exactly low-rank layer's rank differ by
    ~1e-13·‖W‖², and the selection would take the largest that fits rather than the cheapest exact one.
    """
    return torch.where(errors <= ROUNDING * scale, torch.zeros_like(errors), errors)


def pick(costs: torch.Tensor, errors: torch.Tensor, trade_off: float) -> int:
    """argmin over candidates of ``trade_off·cost + error`` (first index on ties).

    In float64: the bisection tries trade-offs up to 1e60, which overflow float32.
    """
    return int(torch.argmin(trade_off * costs.double() + errors.double()))


def choose_with_alpha(
    costs: Sequence[torch.Tensor], errors: Sequence[torch.Tensor], alpha: float, mu: float
) -> Choice:
    """Per-layer choice for a fixed α at penalty μ; at μ = 0 the cheapest form (the least error among equals)."""
    if mu == 0:
        idx = [cheapest(c, e) for c, e in zip(costs, errors)]
        return Choice(idx, math.inf, _total(costs, idx))
    t = 2.0 * alpha / mu
    idx = [pick(c, e, t) for c, e in zip(costs, errors)]
    return Choice(idx, t, _total(costs, idx))


def cheapest(costs: torch.Tensor, errors: torch.Tensor) -> int:
    """The candidate of least cost; of several, the one of least error."""
    costs, errors = costs.double().cpu(), errors.double().cpu()
    return int(torch.argmin(torch.where(costs == costs.min(), errors, torch.inf)))


def choose_for_budget(
    costs: Sequence[torch.Tensor], errors: Sequence[torch.Tensor], budget: float, iterations: int = 200
) -> Choice:
    """The least total error whose total cost fits ``budget``, by bisection on t.

    When even the cheapest forms exceed the budget, the cheapest forms are
    returned and :attr:`Choice.feasible` is False.
    """
    if _total_at(costs, errors, 0.0) <= budget:
        return Choice([pick(c, e, 0.0) for c, e in zip(costs, errors)], 0.0, _total_at(costs, errors, 0.0), budget)
    lo, hi = -60.0, 60.0  # log10 t
    scale = _scale(costs, errors)
    if _total_at(costs, errors, scale * 10**hi) > budget:
        idx = [int(torch.argmin(c)) for c in costs]
        return Choice(idx, math.inf, _total(costs, idx), budget)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if _total_at(costs, errors, scale * 10**mid) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    t = scale * 10**hi
    idx = fill([pick(c, e, t) for c, e in zip(costs, errors)], costs, errors, budget)
    return Choice(idx, t, _total(costs, idx), budget)


def fill(indices: list[int], costs: Sequence[torch.Tensor], errors: Sequence[torch.Tensor], budget: float) -> list[int]:
    """Spend what the trade-off's choice leaves of ``budget``: greedy moves to less error that still fit.

    The bisection's choice lies on the convex hull of each layer's (cost, error) candidates, so it can stop
    well short of the budget: with few layers and a coarse candidate set (a 1024-wide layer's ranks in steps
    of 32, priced at batch 1) a third of the budget may go unused. Each move here takes one layer to a
    candidate of smaller error whose extra cost fits what is left, the move that removes the most error per
    unit of extra cost first, until none fits. The total error only falls and the cost stays within budget.
    """
    indices = list(indices)
    costs = [c.double().cpu() for c in costs]
    errors = [e.double().cpu() for e in errors]
    left = budget - _total(costs, indices)
    while (move := best_move(costs, errors, indices, left, budget)) is not None:
        layer, i = move
        left -= float(costs[layer][i] - costs[layer][indices[layer]])
        indices[layer] = i
    return indices


def best_move(costs: Sequence[torch.Tensor], errors: Sequence[torch.Tensor], indices: Sequence[int],
              left: float, budget: float) -> tuple[int, int] | None:
    """The one-layer move to less error whose extra cost fits ``left``, most error removed per unit of cost.

    ``costs[layer][i] - costs[layer][indices[layer]]`` must be what the move adds to the total; a move that
    costs nothing or saves is taken first. ``None`` when no move fits and helps.
    """
    best, move = 0.0, None
    for layer, (c, e) in enumerate(zip(costs, errors)):
        c, e = c.double().cpu(), e.double().cpu()
        extra, gain = c - c[indices[layer]], e[indices[layer]] - e
        ok = (gain > 0) & (extra <= left + 1e-12 * max(abs(budget), 1.0))
        if not bool(ok.any()):
            continue
        rate = torch.where(ok, gain / extra.clamp_min(1e-300), -torch.inf)
        i = int(torch.argmax(rate))
        if move is None or float(rate[i]) > best:
            best, move = float(rate[i]), (layer, i)
    return move


def _scale(costs: Sequence[torch.Tensor], errors: Sequence[torch.Tensor]) -> float:
    """A typical error/cost ratio, so the bisection range is centred."""
    err = max(float(e.max()) for e in errors) or 1.0
    cost = max(float(c.max()) for c in costs) or 1.0
    return err / cost


def _total_at(costs: Sequence[torch.Tensor], errors: Sequence[torch.Tensor], t: float) -> float:
    return _total(costs, [pick(c, e, t) for c, e in zip(costs, errors)])


def _total(costs: Sequence[torch.Tensor], indices: Sequence[int]) -> float:
    return float(sum(float(c[i]) for c, i in zip(costs, indices)))


def choose_minmax(costs: Sequence[torch.Tensor], relative_errors: Sequence[torch.Tensor], budget: float) -> Choice:
    """Minimise the *largest* relative error across layers subject to the budget (ALDS).

    For an error level ε every layer takes its cheapest form with relative
    error ≤ ε (dense, error 0, always qualifies); the total cost falls as ε
    grows. Bisection over the sorted distinct error levels finds the smallest
    feasible ε exactly; what that choice leaves of the budget is then spent by
    :func:`fill` on the other layers' errors. ``trade_off`` in the result holds that ε.
    """
    levels = torch.unique(torch.cat([e.reshape(-1).double().cpu() for e in relative_errors]))  # sorted

    def at(level: float) -> list[int]:
        return [int(torch.argmin(torch.where(e.double().cpu() <= level, c.double().cpu(), torch.inf)))
                for c, e in zip(costs, relative_errors)]

    lo, hi = 0, len(levels) - 1
    if _total(costs, at(float(levels[hi]))) > budget:
        idx = [int(torch.argmin(c)) for c in costs]
        return Choice(idx, float(levels[hi]), _total(costs, idx), budget)
    while lo < hi:
        mid = (lo + hi) // 2
        if _total(costs, at(float(levels[mid]))) <= budget:
            hi = mid
        else:
            lo = mid + 1
    idx = fill(at(float(levels[lo])), costs, relative_errors, budget)  # fill only lowers errors: the level holds
    return Choice(idx, float(levels[lo]), _total(costs, idx), budget)

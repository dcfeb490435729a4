"""Selection for tasks made of coupled parts (:class:`lcpress.core.scheme.Coupled`), priced per layer.

A part (a channel group) resizes every layer it touches; a layer between two
parts (a conv whose inputs are one group and whose outputs are another) costs
what *both* choices make of it — FLOPs are bilinear in the two kept counts,
and a measured latency is whatever the device says for the new shape. So the
price of one part's candidate is taken with the other parts held at their
current choice (dense at the first round): the sum, over the layers the part
touches, of the task cost model's price of each layer in its new shape
(:class:`lcpress.core.forms.Resized`). Every part then picks
``argmin error + t·price`` — with ``t = 2α/μ``, or the smallest ``t`` whose
choices fit the budget, where the budget is checked on the *exact* total of
the resulting shapes. The prices are then taken again at the new choices, and
the selection repeated, until no choice changes (or ``rounds`` is reached).

What is exact: each part's error (the scheme's), each layer's price, and the
total cost the budget is checked against. What is approximate: the selection
is coordinate descent over the parts (each round prices a part with the others
fixed), not a joint search over all combinations.

A scheme that shares a budget by the largest *relative* error
(``allocation = "minmax"``) is served by :func:`select_minmax`: the smallest
error level ε at which every part's cheapest candidate of relative error ≤ ε
fits the budget, then what that leaves of the budget spent to lower the
summed relative error without any part exceeding ε. Either selection ends by
spending what is left of a budget one part at a time (:func:`fill`): the
trade-off only reaches choices on each part's convex hull. When each layer's price
falls as either of its kept counts falls (FLOPs, parameters), the cheapest
candidate under ε is the same whatever the other parts choose, and ε is the
exact optimum of the min–max problem.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lcpress.core.budget import Choice, best_move, pick
from lcpress.core.costmodel import CostModel
from lcpress.core.forms import Dense, LayerSpec, Resized
from lcpress.core.scheme import Coupled

Cuts = dict[str, tuple[int, int]]


class CoupledPricing:
    """The layers of one task and what the parts' current choices make of them."""

    def __init__(self, specs: dict[str, LayerSpec], coupled: Coupled, model: CostModel) -> None:
        self.specs, self.coupled, self.model = specs, coupled, model
        self.touched = [sorted({layer for cut in cuts for layer in cut}) for cuts in coupled.cuts]
        self.dense = [next(j for j, cut in enumerate(cuts) if not any(o or i for o, i in cut.values()))
                      for cuts in coupled.cuts]

    def removed(self, choice: Sequence[int]) -> dict[str, list[int]]:
        """Outputs and inputs removed from each layer by one choice per part."""
        total: dict[str, list[int]] = {}
        for cuts, j in zip(self.coupled.cuts, choice):
            for layer, (out, inp) in cuts[j].items():
                entry = total.setdefault(layer, [0, 0])
                entry[0] += out
                entry[1] += inp
        return total

    def layer_cost(self, layer: str, removed: Sequence[int]) -> float:
        spec = self.specs[layer]
        if not removed[0] and not removed[1]:
            return float(self.model.costs(spec, [Dense()])[0])
        form = Resized(spec.out_channels - removed[0], spec.in_channels - removed[1])
        return float(self.model.costs(spec, [form])[0])

    def total(self, choice: Sequence[int]) -> float:
        """The exact cost of every layer of the task in the shapes ``choice`` gives them."""
        removed = self.removed(choice)
        return sum(self.layer_cost(layer, removed.get(layer, (0, 0))) for layer in self.specs)

    def prices(self, choice: Sequence[int]) -> list[torch.Tensor]:
        """Each part's candidates priced with every other part held at ``choice``."""
        removed = self.removed(choice)
        out = []
        for p, (cuts, touched) in enumerate(zip(self.coupled.cuts, self.touched)):
            mine = cuts[choice[p]]
            prices = []
            for cut in cuts:
                price = 0.0
                for layer in touched:
                    base = removed.get(layer, [0, 0])
                    old, new = mine.get(layer, (0, 0)), cut.get(layer, (0, 0))
                    price += self.layer_cost(layer, (base[0] - old[0] + new[0], base[1] - old[1] + new[1]))
                prices.append(price)
            out.append(torch.tensor(prices, dtype=torch.float64))
        return out


def select(pricing: CoupledPricing, errors: list[torch.Tensor], trade_off: float | None,
           budget: float | None) -> Choice:
    """One choice per part by coordinate descent (see the module docstring).

    ``trade_off`` is ``t = 2α/μ`` (α selection); with ``budget`` the smallest
    ``t`` whose exact total fits is found by bisection in every round. The
    feasible choice of least total error seen in any round is kept, and what
    it leaves of the budget is spent by :func:`fill`.
    """
    choice = list(pricing.dense)
    best: Choice | None = None
    for _ in range(max(1, pricing.coupled.rounds)):
        prices = pricing.prices(choice)
        if budget is None:
            t, new = trade_off, [pick(c, e, trade_off) for c, e in zip(prices, errors)]
        else:
            t, new = _bisect(pricing, prices, errors, budget)
        total = pricing.total(new)
        error = _error(new, errors)
        candidate = Choice(new, t, total, budget)
        if best is None or (candidate.feasible, -error) > (best.feasible, -_error(best.indices, errors)):
            best = candidate
        if new == choice:
            break
        choice = new
    assert best is not None
    if budget is not None and best.feasible:
        best.indices = fill(pricing, best.indices, errors, budget)
        best.total_cost = pricing.total(best.indices)
    return best


def fill(pricing: CoupledPricing, indices: Sequence[int], errors: list[torch.Tensor], budget: float) -> list[int]:
    """Spend what a feasible choice leaves of ``budget``: one part at a time, to less error, while it fits.

    The trade-off's choice lies on the convex hull of each part's (price, error) candidates, so with
    candidates in steps of ``multiple`` it can stop a whole step short of the budget (the FLOPs of one
    more block of channels). As :func:`lcpress.core.budget.fill` does for independent layers, each move
    takes the part whose move to a candidate of smaller error removes the most error per unit of extra
    cost and still fits; the extra cost is exact (the part's candidates are priced with every other part
    at its current choice) and the prices are taken again after every move. The summed error only
    falls, and the exact total stays within the budget.
    """
    choice = list(indices)
    while True:
        left = budget - pricing.total(choice)
        move = best_move(pricing.prices(choice), errors, choice, left, budget)
        if move is None:
            return choice
        choice[move[0]] = move[1]


def select_minmax(pricing: CoupledPricing, relative: list[torch.Tensor], budget: float) -> Choice:
    """The least largest relative error whose choices fit ``budget``, the remainder spent on the sum.

    For an error level ε, every part takes its cheapest candidate with relative
    error ≤ ε (dense, error 0, always qualifies), priced with the other parts
    held at their choices, until no choice changes; the total cost falls as ε
    grows, and bisection over the sorted distinct error levels finds the
    smallest ε whose exact total fits. Then the sum selection
    (:func:`select`) runs on the candidates within ε, so budget the min–max
    choice leaves unused lowers the other parts' errors; it is kept only if
    it fits and its summed error is lower, and what is still left is spent by
    :func:`fill`. ``trade_off`` in the result is ε.
    """
    levels = torch.unique(torch.cat([e.reshape(-1).double() for e in relative]))  # sorted

    def at(level: float) -> list[int]:
        choice = list(pricing.dense)
        for _ in range(max(1, pricing.coupled.rounds)):
            prices = pricing.prices(choice)
            new = [_cheapest_within(c, e.double(), level) for c, e in zip(prices, relative)]
            if new == choice:
                break
            choice = new
        return choice

    lo, hi = 0, len(levels) - 1
    cheapest = at(float(levels[hi]))
    if pricing.total(cheapest) > budget:
        return Choice(cheapest, float(levels[hi]), pricing.total(cheapest), budget)
    while lo < hi:
        mid = (lo + hi) // 2
        if pricing.total(at(float(levels[mid]))) <= budget:
            hi = mid
        else:
            lo = mid + 1
    level = float(levels[lo])
    base = at(level)
    within = [torch.where(e.double() <= level, e.double(), torch.inf) for e in relative]
    spent = select(pricing, within, None, budget)
    if spent.feasible and _error(spent.indices, relative) < _error(base, relative):
        indices = spent.indices  # select's own fill has spent the rest: within ε its moves are fill's below
    else:
        indices = fill(pricing, base, relative, budget)  # moves only lower errors: the level holds
    return Choice(indices, level, pricing.total(indices), budget)


def _cheapest_within(prices: torch.Tensor, errors: torch.Tensor, level: float) -> int:
    """The cheapest candidate of error ≤ ``level``; of equally cheap ones, the least error."""
    allowed = torch.where(errors <= level, prices, torch.inf)
    return int(torch.argmin(torch.where(allowed == allowed.min(), errors, torch.inf)))


def _error(indices: Sequence[int], errors: list[torch.Tensor]) -> float:
    return sum(float(e[j]) for e, j in zip(errors, indices))


def _bisect(pricing: CoupledPricing, prices: list[torch.Tensor], errors: list[torch.Tensor],
            budget: float) -> tuple[float, list[int]]:
    """The smallest trade-off whose choices' exact total fits ``budget`` (the cheapest choices if none does)."""
    def at(t: float) -> list[int]:
        return [pick(c, e, t) for c, e in zip(prices, errors)]

    if pricing.total(at(0.0)) <= budget:
        return 0.0, at(0.0)
    err = max((float(e[e.isfinite()].max()) for e in errors), default=1.0) or 1.0  # inf: a candidate ruled out
    cost = max((float(c.max()) for c in prices), default=1.0) or 1.0
    scale, lo, hi = err / cost, -30.0, 30.0
    if pricing.total(at(scale * 10**hi)) > budget:
        return math.inf, [int(torch.argmin(c)) for c in prices]
    for _ in range(100):
        mid = (lo + hi) / 2
        if pricing.total(at(scale * 10**mid)) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-9:
            break
    return scale * 10**hi, at(scale * 10**hi)

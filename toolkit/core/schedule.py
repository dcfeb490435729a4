"""The penalty path: μ for every LC step — fixed, or adapted to how far w still is from Δ(θ).

LC converges only when μ grows large enough that the L step's weights ``w``
end up at their compressed form Δ(θ). After an L step, ``w`` sits where the
loss's pull balances the penalty's: ``∇L(w) + μ (w − Δ) ≈ 0``, so the
distance ``d = ‖w − Δ(θ)‖`` is about ``G/μ`` with ``G = ‖∇L‖`` the pull the
loss keeps exerting. A schedule that starts with μ far below ``G/d`` wastes
its first steps (the penalty moves nothing), and one that ends below
``G/(tolerance·‖Δ‖)`` leaves ``w`` far from Δ(θ): the result is then little
more than a direct compression of the trained weights.

``mu0: auto`` (the default) starts at ``μ0 = G0/d0``: ``G0`` is the norm of the
training loss's gradient at the directly compressed weights Δ(θ_DC), measured
on a few training batches, and ``d0 = ‖w̄ − Δ(θ_DC)‖``, so the first L step
already closes about half the gap. ``factor: auto`` re-reads ``G ≈ μ_k·d_k``
after every step and grows μ geometrically so that, over the remaining
steps, ``d`` reaches ``tolerance·‖Δ(θ)‖``; each step grows μ by at least 1
and at most :data:`MAX_FACTOR`. Numbers given for ``mu0`` and ``factor`` are
used as they are: ``μ_k = mu0 · factor^(k−1)``.

Everything the adaptive rule reads is in the run's history (μ, distance and
‖Δ(θ)‖ of every step), so a resumed run continues on exactly the same path.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from lcpress.config import ScheduleConfig

#: The largest growth of μ in one LC step under ``factor: auto``.
MAX_FACTOR = 4.0
#: μ0 when ``mu0: auto`` has no training loss to measure G0 with (a custom train_fn and no loaders).
FALLBACK_MU0 = 1e-3


def initial_mu(config: ScheduleConfig, gradient_norm: float | None, distance: float, scale: float = 0.0) -> float:
    """μ0: the configured number, else ``G0/d0`` (see the module docstring), else :data:`FALLBACK_MU0`.

    ``d0`` is taken as at least ``tolerance·‖Δ(θ)‖`` (``scale``): when the direct compression is already
    (nearly) exact — a rank at or above the layer's — ``G0/d0`` would divide by rounding noise, and an L step
    at that μ diverges. The μ that holds ``w`` within the tolerance is all such a run needs.
    """
    if config.mu0 != "auto":
        return float(config.mu0)
    distance = max(distance, config.tolerance * scale)
    if gradient_norm is None or not math.isfinite(gradient_norm) or gradient_norm <= 0 or distance <= 0:
        return FALLBACK_MU0
    return gradient_norm / distance


def next_mu(config: ScheduleConfig, history: Sequence[dict[str, Any]], k: int) -> float:
    """μ of LC step ``k`` (k ≥ 1), from the rows of steps 0 … k−1 (row 0 holds μ0)."""
    mu0 = float(history[0]["mu"])
    if k == 1:
        return mu0
    last = history[k - 1]
    mu = float(last["mu"])
    if config.factor != "auto":
        return mu * float(config.factor)
    return mu * adaptive_factor(mu, float(last["distance"]), float(last.get("scale") or 0.0),
                                config.tolerance, config.steps - (k - 1))


def adaptive_factor(mu: float, distance: float, scale: float, tolerance: float, remaining: int) -> float:
    """The growth of μ that brings ``distance`` to ``tolerance·scale`` over ``remaining`` steps, in [1, MAX_FACTOR]."""
    target = tolerance * scale
    if remaining <= 0 or target <= 0 or distance <= target:
        return 1.0
    needed = (mu * distance) / target  # G/target: the μ at which w would settle within the tolerance
    factor = (needed / mu) ** (1.0 / remaining)
    return float(min(MAX_FACTOR, max(1.0, factor)))


def convergence_problem(config: ScheduleConfig, history: Sequence[dict[str, Any]]) -> str | None:
    """Why the LC path did not converge (w still far from Δ(θ) at the end), or None."""
    if config.steps == 0 or len(history) < 2:
        return None
    first, last = history[0], history[-1]
    scale = float(last.get("scale") or 0.0)
    distance = float(last["distance"])
    if scale <= 0 or distance <= 10 * config.tolerance * scale:
        return None
    return (f"LC did not converge: ‖w − Δ(θ)‖ went from {float(first['distance']):.3g} to {distance:.3g} "
            f"({distance / scale:.1%} of ‖Δ(θ)‖, aim: {config.tolerance:.1%}), so the compressed weights are little "
            f"more than a direct compression of the trained ones. Let μ grow further: more schedule.steps, a larger "
            f"schedule.factor (or factor: auto), or a larger schedule.mu0 (or mu0: auto)")

"""Run one C step on one layer exactly as a compression run does.

The kit does not imitate the engine: it builds a one-task
:class:`~lcpress.core.engine.LCEngine` and calls its ``c_step``, so candidates,
the core's selection (α, or a budget under a cost model), the seeded
generator and ``compress`` are the very code a real run executes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lcpress.config import ScheduleConfig, TargetConfig, TaskConfig
from lcpress.core.costmodel import CostModel
from lcpress.core.engine import LCEngine
from lcpress.core.forms import Form, LayerSpec
from lcpress.core.scheme import Candidates, CStepContext, Scheme, State
from lcpress.core.plan import Task
from lcpress.core.views import TaskView


class ParamCount(CostModel):
    """Stored numbers of a form: the kit's own cost model, so it depends on no plugin."""

    name = "conformance_params"
    unit = "params"

    def cost(self, spec: LayerSpec, form: Form) -> float:
        return float(form.param_count(spec))


@dataclass
class CStepRun:
    """What one C step produced: θ, and what the core chose from (None for a scheme that does not select)."""

    state: State
    candidates: Candidates | None
    choice: int | None

    @property
    def claimed_error(self) -> float | None:
        """The error the scheme's candidate list promised for the chosen form."""
        if self.candidates is None or self.choice is None:
            return None
        return float(self.candidates.errors[self.choice])


def run_c_step(
    scheme: Scheme,
    w: torch.Tensor,
    spec: LayerSpec | None,
    *,
    layer: str = "layer",
    cost_model: CostModel | None = None,
    alpha: float = 0.0,
    ratio: float | None = None,
    mu: float = 1e-3,
    seed: int = 0,
    step: int = 0,
    previous: State | None = None,
) -> CStepRun:
    """One C step of ``scheme`` on ``w`` through the engine.

    :param ratio: a budget, as a fraction of the layer's dense cost under
        ``cost_model``; None selects with ``alpha`` instead.
    :param previous: the state of the previous step (warm start).
    """
    cost_model = cost_model or ParamCount()
    target = TargetConfig(cost=cost_model.name, ratio=ratio) if ratio is not None else None
    config = TaskConfig(layers=[layer], scheme=scheme.name, cost=cost_model.name, alpha=alpha, target=target)
    param = nn.Parameter(w.detach().clone(), requires_grad=False)
    task = Task(layer, [layer], [param], TaskView("identity", (tuple(w.shape),)), scheme, cost_model, spec, 0, config)
    holder = nn.Module()
    holder.register_parameter("weight", param)
    engine = LCEngine(holder, [task], ScheduleConfig(mu0=mu, steps=0), None,
                      cost_models={cost_model.name: cost_model}, seed=seed, progress=False, refuse_all_dense=False)
    engine.states[0] = previous
    engine.next_step = step
    seen: dict[str, Any] = {}
    original = scheme.candidates_many

    def recording(items: list[tuple[torch.Tensor, CStepContext]]) -> list[Candidates | None]:
        seen["candidates"] = original(items)[0]
        return [seen["candidates"]]

    scheme.candidates_many = recording  # type: ignore[method-assign]
    engine_log = logging.getLogger("lcpress.engine")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)  # "target … is out of reach" is expected at the kit's small budgets
    try:
        engine.c_step(step, mu)
    finally:
        del scheme.candidates_many
        engine_log.setLevel(level)
    candidates = seen.get("candidates")
    choice = engine.selection[0].indices[0] if candidates is not None else None
    return CStepRun(engine.states[0], candidates, choice)

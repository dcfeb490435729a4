"""Before a run: what the candidate forms cost on this device, and what the direct compression would choose.

Both are ordinary API calls — the CLI's ``lcpress profile`` and ``lcpress
costs`` print their results — and both plan the run exactly as
:func:`lcpress.compress` does, then stop before any training:

* :func:`profile_costs` asks every measured cost model of the run (CPU/GPU
  latency, energy …) for every form any task's C step could choose, so a run
  or a sweep later finds every price in the device's cost table;
* :func:`predict_costs` runs the direct-compression C step (step 0, at μ0)
  and prices each layer dense and in the chosen form under every cost model.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from lcpress.config import LCConfig
from lcpress.core.budget import Choice
from lcpress.core.engine import LCEngine
from lcpress.core.measured import MeasuredCostModel
from lcpress.core.plan import load_config, plan
from lcpress.core.realize import costlier_than_dense
from lcpress.core.schedule import initial_mu
from lcpress.nn.modules import PointwiseConv2d
from lcpress.progress import progress_bar
from lcpress.reporting.tables import layer_table

log = logging.getLogger("lcpress.preview")


@dataclass
class Profile:
    """What :func:`profile_costs` measured: one row per (cost model, layer), and counts per cost model."""

    table: pd.DataFrame
    measured: dict[str, MeasuredCostModel] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.measured:
            return ("no measured cost model in this config (cpu_latency, gpu_latency, gpu_energy …): "
                    "nothing to profile")
        lines = [self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        for name, ratio in self.lowest_ratios().items():
            lines.append(f"{name}: the cheapest forms reach {ratio:.1%} of the dense cost of the layers the config "
                         f"compresses — a target ratio below that is out of reach")
        for name, model in self.measured.items():
            again = f" ({model.remeasured} measured again: out of line with their neighbours)" if model.remeasured else ""
            estimated = (f", {len(model.estimated)} priced from dense without timing (more FLOPs and parameters "
                         f"than dense)") if model.estimated else ""
            lines.append(f"{name}: {model.measurements} measured now{again}, {model.table.hits} from the table "
                         f"{model.table.path}{estimated}")
        return "\n".join(lines)


    def lowest_ratios(self) -> dict[str, float]:
        """Per measured cost model: the compressed layers' total with their cheapest forms, over their dense total."""
        if self.table.empty:
            return {}
        sums = self.table.groupby("cost model")[["cheapest cost", "dense"]].sum()
        return {name: float(row["cheapest cost"] / row["dense"]) for name, row in sums.iterrows() if row["dense"]}


@dataclass
class Prediction:
    """What :func:`predict_costs` found: the per-layer table, and each budgeted group's selection."""

    table: pd.DataFrame
    selection: dict[int, Choice]


def _engine(model: nn.Module, config: LCConfig, example_input: Any, progress: bool) -> LCEngine:
    if any(isinstance(m, PointwiseConv2d) for m in model.modules()):
        model = copy.deepcopy(model)  # planning turns realized 1×1 stages into convs; a preview leaves the model be
    planned = plan(model, config, example_input)
    measured = sorted({t.group for t in planned.tasks if t.scheme.sensitivity == "measured"})
    for task in planned.tasks:  # a preview has no metric to measure with: it ranks by relative error
        if task.scheme.sensitivity == "measured":
            task.scheme.sensitivity = "error"
    if measured:
        log.warning("tasks[%s]: sensitivity: measured scores candidates by the run's metric, which a preview does "
                    "not evaluate; this preview ranks them by relative error (sensitivity: error), so the run may "
                    "choose other forms within the same budget", ", ".join(map(str, measured)))
    return LCEngine(model, planned.tasks, config.schedule, None, graph=planned.graph,
                    cost_models=planned.cost_models, seed=config.seed, progress=progress)


def profile_costs(model: nn.Module, config: LCConfig | dict[str, Any] | str, example_input: Any, *,
                  progress: bool = True) -> Profile:
    """Measure, under every measured cost model of the run, every candidate form of every task's layers."""
    config = load_config(config)
    engine = _engine(model, config, example_input, progress)
    measured = {n: m for n, m in engine.cost_models.items() if isinstance(m, MeasuredCostModel)}
    rows = []
    if measured:
        for task, ctx in zip(engine.tasks, engine.candidates(0, initial_mu(config.schedule, None, 0.0))):
            if ctx.candidates is None or task.spec is None:
                continue
            forms = ctx.candidates.forms
            for name, cost_model in measured.items():
                with progress_bar(total=len(forms), desc=f"{name} {task.name}", enabled=progress) as bar:
                    for form in forms:
                        cost_model.costs(task.spec, [form])
                        bar.update(1)
                costs = cost_model.costs(task.spec, forms).tolist()  # with what was measured again
                best = min(range(len(costs)), key=costs.__getitem__)
                dense = cost_model.dense_cost(task.spec)
                rows.append({"cost model": name, "layer": task.name, "forms": len(costs), "dense": dense,
                             "cheapest": forms[best].describe(), "cheapest cost": costs[best],
                             "cheapest / dense": costs[best] / dense if dense else float("nan")})
    return Profile(pd.DataFrame(rows), measured)


def predict_costs(model: nn.Module, config: LCConfig | dict[str, Any] | str, example_input: Any, *,
                  calibration: Any = None, progress: bool = True) -> Prediction:
    """Per-layer cost, dense and in the forms the direct-compression step chooses (no training).

    With ``schedule.dc_mu: 0`` step 0 takes the cheapest forms by design, and a target or alpha first selects
    at LC step 1: the preview shows that selection, from the trained weights.

    ``calibration`` (training batches) lets the preview measure μ0 as the run will (``mu0: auto``, which sets
    the trade-off of an ``alpha`` selection) and collect the layers' inputs for ``error: output``.
    """
    from lcpress.runs.compress import calibrate_fn, gradient_probe

    config = load_config(config)
    engine = _engine(model, config, example_input, progress)
    if calibration is not None:
        device = next(model.parameters()).device
        engine.gradient_norm = gradient_probe(config, calibration, device)
        engine.calibrate = calibrate_fn(calibration, config, device)
    mu0 = engine.direct_compression()  # the run's own step 0: at dc_mu, or μ0 (a provisional one under mu0: auto)
    if config.schedule.dc_mu == 0 and config.schedule.steps > 0:  # step 0 took the cheapest forms; the run's
        engine.c_step(1, mu0)  # selection starts at LC step 1: what it chooses from these weights
    schemes = {name: t.scheme.name for t in engine.tasks for name in t.layers}
    forms = engine.forms()
    kept = {name: "costs more than dense" for task in engine.tasks for name in task.layers  # as realization will
            if name in forms and costlier_than_dense(task, engine.graph.specs.get(name), forms[name], engine.cost_models)}
    table = layer_table(engine.graph, forms, engine.cost_models, schemes, kept_dense=kept)
    return Prediction(table, dict(engine.selection))

"""What a run directory says about its run, finished or still running.

A run writes ``run.json`` (config, status, and — once planned — the traced
layer specs and the task list: :func:`plan_record`), ``history.csv`` after
every LC step, ``checkpoint.safetensors`` after every step, and
``layers.csv`` when it finishes. :func:`read_run` gathers these into a
:class:`RunSummary` for reports.

A finished run's per-layer table is its ``layers.csv``. A running run has no
such file yet, so the table is derived from the checkpoint: each task's θ is
turned into its form by the scheme named in the plan, and the forms are priced
with the analytic cost models of the run (params, FLOPs …). Measured cost
models (latency, energy) are left out of that table, so that looking at a run
never starts measurements on a machine that may not be the one the run
measures; their per-step totals are in the history either way. The measured
sensitivity curves (``sensitivity: measured``) of a running run come from the
same checkpoint, so they can be looked at as soon as they are measured, long
before the run ends. Whatever cannot be shown is listed in
:attr:`RunSummary.missing`, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lcpress.config import LCConfig
from lcpress.core.forms import LayerSpec
from lcpress.core.graph import ModelGraph
from lcpress.core.plan import Task, cost_model_names, resolve
from lcpress.core.scheme import State
from lcpress.core.tree import join_tensors
from lcpress.errors import LcpressError
from lcpress.io.files import read_file
from lcpress.io.rundir import CHECKPOINT, RUN_INFO
from lcpress.reporting.tables import layer_table


def plan_record(graph: ModelGraph, tasks: list[Task]) -> dict[str, Any]:
    """JSON record of the traced layers and the tasks, kept in ``run.json``."""
    return {
        "layers": {name: spec.to_dict() for name, spec in graph.specs.items()},
        "tasks": [{"name": t.name, "layers": list(t.layers), "scheme": t.scheme.name, "group": t.group}
                  for t in tasks],
    }


@dataclass
class RunSummary:
    """Everything a report shows about one run directory."""

    path: Path
    info: dict[str, Any]
    history: pd.DataFrame
    layers: pd.DataFrame | None
    layers_source: str
    missing: list[str] = field(default_factory=list)
    #: ``sensitivity: measured``: each task's curve ({"errors": …, "drops": …}) by task name; empty if none
    sensitivity: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.info.get("status") == "finished"

    @property
    def config(self) -> dict[str, Any]:
        return self.info.get("config") or {}

    @property
    def steps_done(self) -> int:
        """LC steps recorded in the history (step 0, the direct compression, not counted)."""
        return int(self.history["step"].max()) if len(self.history) else -1

    @property
    def steps_planned(self) -> int | None:
        return (self.config.get("schedule") or {}).get("steps")

    @property
    def metric_name(self) -> str:
        return self.config.get("metric", "metric")


def read_run(path: str | Path) -> RunSummary:
    """Read a run directory; raises if it holds no lcpress run."""
    path = Path(path)
    info_path, history_path = path / RUN_INFO, path / "history.csv"
    if not info_path.is_file() and not history_path.is_file():
        raise LcpressError(f"{str(path)!r} is not an lcpress run directory (it has no {RUN_INFO} and no history.csv)")
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise LcpressError(f"{str(info_path)!r} is not valid JSON: {exc}") from None
    _check_info(info, info_path)
    missing: list[str] = []
    history = _read_csv(history_path)
    if history is None:
        history = pd.DataFrame()
        missing.append("the LC curve: history.csv is not written yet (it appears after the direct-compression step)")
    table = _read_csv(path / "layers.csv") if info.get("status") == "finished" else None
    if table is not None:
        return RunSummary(path, info, history, table, "layers.csv of the finished run", missing,
                          info.get("sensitivity") or {})
    checkpoint = _read_checkpoint(path, missing)  # a running run: its table and curves are in the checkpoint
    layers, source = _layers_of(checkpoint, info, missing)
    curves = info.get("sensitivity") or (checkpoint_sensitivity(checkpoint[1]) if checkpoint is not None else {})
    return RunSummary(path, info, history, layers, source, missing, curves)


#: The shape of run.json that reports read: field → the type it must have when present.
INFO_FIELDS = {"status": str, "config": dict, "plan": dict, "dense_metric": (int, float), "metric": (int, float),
               "totals": dict, "sensitivity": dict}


def _check_info(info: Any, path: Path) -> None:
    """run.json must have the shape lcpress writes; a hand-edited or foreign one is named, field by field."""
    def refuse(what: str, expected: str) -> None:
        raise LcpressError(f"{str(path)!r}: {what} should be {expected}; this run.json was not written by lcpress "
                           f"(or was edited), so no report can be made from it")

    if not isinstance(info, dict):
        refuse("the file", "a JSON object")
    for name, kind in INFO_FIELDS.items():
        if info.get(name) is not None and not isinstance(info[name], kind):
            refuse(name, f"a {kind.__name__ if isinstance(kind, type) else 'number'}")
    config = info.get("config") or {}
    if not isinstance(config.get("tasks", []), list) or not all(isinstance(t, dict) for t in config.get("tasks", [])):
        refuse("config.tasks", "a list of mappings")
    if not isinstance(config.get("schedule") or {}, dict):
        refuse("config.schedule", "a mapping")
    for i, task in enumerate(config.get("tasks", [])):
        target = task.get("target") or {}
        if not isinstance(target, dict) or not all(isinstance(target.get(k), (int, float, type(None)))
                                                   for k in ("ratio", "value")):
            refuse(f"config.tasks[{i}].target", "a mapping with a numeric ratio or value")
    plan = info.get("plan") or {}
    if not isinstance(plan.get("layers", {}), dict) or not isinstance(plan.get("tasks", []), list) \
            or not all(isinstance(spec, dict) for spec in plan.get("layers", {}).values()):
        refuse("plan", "a mapping of layers (each a mapping) and a list of tasks")


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"layer": str})  # layer names such as "0" stay names
    except (ValueError, pd.errors.EmptyDataError):
        return None
    if path.name == "history.csv" and ("step" not in table or not pd.api.types.is_integer_dtype(table["step"])):
        raise LcpressError(f"{str(path)!r} has no column of whole LC step numbers ('step'); it was not written by "
                           f"lcpress (or was edited), so no report can be made from it")
    return table


def _read_checkpoint(path: Path, missing: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A run's checkpoint (tensors, metadata), read once for its table and curves; None if it has none."""
    if not (path / CHECKPOINT).is_file():
        missing.append("the per-layer table: the run has no layers.csv yet and no checkpoint to derive it from "
                       "(checkpoints need `checkpoint: true`)")
        return None
    try:
        return read_file(path / CHECKPOINT, what="checkpoint")
    except LcpressError as exc:
        missing.append(f"the per-layer table and measured sensitivity: {exc}")
        return None


def _layers_of(checkpoint: tuple[dict[str, Any], dict[str, Any]] | None, info: dict[str, Any],
               missing: list[str]) -> tuple[pd.DataFrame | None, str]:
    """The per-layer table priced from a checkpoint, and where it came from; what is missing is noted instead."""
    if checkpoint is None:
        return None, ""
    if "plan" not in info:
        missing.append("the per-layer table: run.json holds no plan of layers and tasks (the run was started by an "
                       "older lcpress, or has not traced the model yet); it appears when the run finishes")
        return None, ""
    try:
        table, step = layers_from_checkpoint(*checkpoint, info)
    except LcpressError as exc:
        missing.append(f"the per-layer table: {exc}")
        return None, ""
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # a plan or checkpoint of another shape
        missing.append(f"the per-layer table: run.json's plan does not match its checkpoint ({type(exc).__name__}: "
                       f"{exc})")
        return None, ""
    if _measures(info.get("config") or checkpoint[1].get("config")):
        missing.append("measured cost models in the per-layer table (only analytic ones are priced before a run "
                       "finishes; their totals per step are in the LC history)")
    return table, f"the checkpoint after LC step {step}"


def checkpoint_sensitivity(meta: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """The measured sensitivity curves a checkpoint holds, by task name (as a finished run's ``run.json`` has them)."""
    engine = meta.get("engine") or {}
    names = engine.get("task_names") or []
    curves = engine.get("sensitivity") or {}
    if not isinstance(curves, dict):
        return {}
    return {names[int(i)] if str(i).isdigit() and int(i) < len(names) else str(i): doc for i, doc in curves.items()}


def _measures(config: dict[str, Any]) -> bool:
    """Whether the run's config names a measured cost model (its per-layer prices are not re-measured here)."""
    from lcpress.core.measured import MeasuredCostModel
    from lcpress.core.registry import get_registry

    classes = get_registry().cost_models.classes
    names = cost_model_names(LCConfig.from_dict(config))  # read already, to price the checkpoint
    return any(issubclass(classes.get(n, object), MeasuredCostModel) for n in names)


def layers_from_checkpoint(tensors: dict[str, Any], meta: dict[str, Any],
                           info: dict[str, Any]) -> tuple[pd.DataFrame, int]:
    """The per-layer table of the forms θ takes in a checkpoint's (tensors, metadata), and the LC step after which
    it was written."""
    engine = meta.get("engine") or {}
    resolved = resolve(LCConfig.from_dict(info.get("config") or meta.get("config")), measured=False)
    plan = info["plan"]
    specs = {name: LayerSpec.from_dict(doc) for name, doc in plan["layers"].items()}
    forms, schemes = {}, {}
    for task, packed in zip(plan["tasks"], engine.get("states", [])):
        for name in task["layers"]:
            schemes[name] = task["scheme"]
        if packed is None or len(task["layers"]) != 1:
            continue
        doc = join_tensors(packed, tensors)
        scheme = resolved.groups[task["group"]].scheme()
        forms[task["name"]] = scheme.form(State(doc["tensors"], doc["meta"]))
    return layer_table(specs, forms, resolved.cost_models, schemes), int(engine.get("next_step", 1)) - 1

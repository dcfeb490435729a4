"""Per-layer tables: every traced layer priced dense and as compressed, under every cost model of a run.

:func:`layer_table` returns a pandas DataFrame (runs save it as
``layers.csv``); :func:`format_table` renders it for a terminal, with
thousands separators, a totals row and after/before ratios. Reports, sweeps
and the CLI all print tables through here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence, get_args

import pandas as pd
import torch

from lcpress.core.costmodel import CostModel
from lcpress.core.forms import Dense, Form, LayerSpec
from lcpress.core.graph import ModelGraph
from lcpress.core.plan import REPORTED_COST_MODELS
from lcpress.errors import listed
from lcpress.linalg.matrices import Shape, to_matrix

__all__ = ["REPORTED_COST_MODELS", "layer_table", "format_table", "totals", "full_rank", "form_fields",
           "form_value_columns", "display_columns", "format_number", "cell", "kept_dense_layers", "target_lines"]


def layer_table(
    graph: ModelGraph | Mapping[str, LayerSpec],
    forms: Mapping[str, Form],
    cost_models: Mapping[str, CostModel],
    schemes: Mapping[str, str] | None = None,
    realized: Iterable[str] = (),
    kept_dense: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per traced layer: shape, scheme, form, and cost before/after per cost model.

    ``kept_dense`` names layers whose compressed form was *not* realized (it
    would cost more than dense, or the layer sits where a realized module
    cannot stand in): the model — and the saved file — hold them dense, so they
    are priced dense, and their form reads ``<form> → kept dense``.

    Besides the form's short description, every field of the form gets a
    ``form_<field>`` column (``form_rank``, ``form_groups``, a quantizer's
    ``form_bits`` …), so tables and plots read "whatever the form says"
    without knowing the scheme. ``full_rank`` is the rank of the layer's
    weight matrix (in the form's matricization), the reference for ranks.
    """
    specs = graph.specs if isinstance(graph, ModelGraph) else graph
    schemes, kept_dense = schemes or {}, kept_dense or {}
    realized = set(realized)
    rows = []
    for name, spec in specs.items():
        form = forms.get(name, Dense())
        text = form.describe()
        if name in kept_dense and not isinstance(form, Dense):
            form, text = Dense(), f"{text} {KEPT_DENSE}"
        if spec.tied and isinstance(form, Dense):
            text = "dense (weight tied)"  # its weight is counted with the layer it is tied to
        row = {
            "layer": name,
            "kind": spec.kind,
            "shape": "×".join(map(str, spec.weight_shape)),
            "scheme": schemes.get(name, "—"),
            "form": text,
            "realized": name in realized,
            "full_rank": full_rank(spec, form),
        }
        row.update(form_fields(form))
        for cname, model in cost_models.items():
            if model.unavailable_reason():
                continue
            before, after = model.costs(spec, [Dense(), form]).tolist()
            row[f"{cname}_before"] = before
            row[f"{cname}_after"] = after
        rows.append(row)
    return pd.DataFrame(rows)


def form_fields(form: Form) -> dict[str, Any]:
    """``form_<field>`` entries for what the form reports (see :meth:`Form.report_fields`)."""
    return {f"form_{k}": v for k, v in form.report_fields().items()}


def full_rank(spec: LayerSpec, form: Form) -> int:
    """Rank of the weight as the matrix the form's shape factorizes (:func:`lcpress.linalg.to_matrix`)."""
    shape = getattr(form, "shape", None)
    matrix = to_matrix(torch.empty(spec.weight_shape, device="meta"), shape if shape in get_args(Shape) else "channel")
    return min(matrix.shape)


def totals(table: pd.DataFrame) -> dict[str, float]:
    """Sum of every ``*_before`` / ``*_after`` column."""
    return {c: float(table[c].sum()) for c in table.columns if c.endswith(("_before", "_after"))}


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned text, with a totals row and after/before ratios."""
    shown = display_columns(table)
    numbers = [c for c in shown.columns if c.endswith(("_before", "_after")) or c not in table.columns
               or c.startswith("form_")]  # costs, and the form fields (renamed, unless a name was taken)
    sums = totals(table)
    total_row = {c: "" for c in shown.columns}
    total_row.update({"layer": "TOTAL"})
    total_row.update(sums)
    shown = pd.concat([shown, pd.DataFrame([total_row])], ignore_index=True)
    for col in numbers:
        shown[col] = shown[col].map(format_number)
    if "realized" in shown:  # a preview (lcpress costs) has no realized layers to show
        shown["realized"] = shown["realized"].map(lambda v: "yes" if v is True else ("" if v in ("", None) else "no"))
    text = shown.to_string(index=False)
    ratios = []
    for col in sums:
        if col.endswith("_before") and sums[col]:
            name = col[: -len("_before")]
            ratios.append(f"{name}: {sums[name + '_after'] / sums[col]:.1%} of dense")
    return text + ("\n" + ", ".join(ratios) if ratios else "")


def form_value_columns(table: pd.DataFrame) -> list[str]:
    """The numeric ``form_<field>`` columns — chosen rank, nonzeros, bits … — whatever the forms carry.

    Booleans and text fields (a low-rank form's ``shape``) are left out: the
    ``form`` column's description already says them.
    """
    return [c for c in table.columns if c.startswith("form_") and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def display_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The table for people: machine columns (kind, full_rank, text form fields) out, numeric form fields
    as columns named by the field (``rank``, ``nonzeros``, ``bits`` …) right after ``form``; a layer whose
    form has no such field shows —."""
    values = form_value_columns(table)
    drop = [c for c in table.columns if c in ("kind", "full_rank") or (c.startswith("form_") and c not in values)]
    shown = table.drop(columns=drop)
    order = [c for c in shown.columns if c not in values]
    at = order.index("form") + 1 if "form" in order else len(order)
    shown = shown[order[:at] + values + order[at:]]
    return shown.rename(columns={c: c[len("form_"):] for c in values if c[len("form_"):] not in shown.columns})


def format_number(value: object) -> str:
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return str(v)
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4g}"


def cell(value: object) -> str:
    """Table cells of reports: numbers as :func:`format_number`, booleans as yes/no, missing as —."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, (int, float)):
        return format_number(value)
    return str(value)


KEPT_DENSE = "→ kept dense"


def share(ratio: float) -> str:
    """A ratio as a percentage: one decimal, more digits below 0.1% (a 0.0004 target is not "0.0%")."""
    return f"{ratio:.1%}" if ratio >= 0.001 or ratio == 0 else f"{100 * ratio:.2g}%"


def kept_dense_layers(table: pd.DataFrame | None) -> list[str]:
    """The layers of a per-layer table whose compressed form realization kept dense (see :func:`layer_table`)."""
    if table is None or "form" not in table or "layer" not in table:
        return []
    return list(table.loc[table["form"].astype(str).str.endswith(KEPT_DENSE), "layer"])


def target_lines(config: Mapping[str, Any], row: Mapping[str, Any] | None, kept: Sequence[str] = ()) -> list[str]:
    """"tasks[0] target: flops ≤ 50.0% of dense; achieved 47.8%" for every task group with a target.

    ``config`` is a run config as a dict; ``row`` the history row of the
    step to report (its ``target<g>_*`` columns), or None before any step.
    "Achieved" is what the last C step's forms cost; ``kept`` names layers
    realization then kept dense, which the model holds at their dense cost,
    so the line says the model is not at that figure.
    """
    lines = []
    for g, task in enumerate(config.get("tasks") or []):
        target = task.get("target") if isinstance(task, Mapping) else None
        if not target:
            continue
        asked = (f"{share(target['ratio'])} of dense" if target.get("ratio") is not None
                 else format_number(target.get("value")))
        line = f"tasks[{g}] target: {target.get('cost')} ≤ {asked}"
        achieved, dense = (row or {}).get(f"target{g}_achieved"), (row or {}).get(f"target{g}_dense")
        if _present(achieved) and _present(dense) and float(dense) > 0:
            requested = (row or {}).get(f"target{g}_requested")
            missed = _present(requested) and float(achieved) > float(requested) * (1 + 1e-9)
            got = (share(float(achieved) / float(dense)) if target.get("ratio") is not None  # in the units asked
                   else f"{format_number(achieved)} ({share(float(achieved) / float(dense))} of dense)")
            line += f"; achieved {got}" + (" (out of reach: the cheapest forms)" if missed else "")
            if kept:
                line += (f" by the forms chosen, but realization kept {listed([repr(k) for k in kept])} dense: the "
                         f"model holds them at their dense cost (the table shows what it holds)")
        lines.append(line)
    return lines


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))

"""Per-layer tables and totals that people read.

:func:`layer_table` prices every traced layer, dense and as compressed, under
each cost model of the run, and returns a pandas DataFrame (saved as CSV by
runs); :func:`format_table` renders it for a terminal with thousands
separators and a totals row.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

from .costmodel import CostModel
from .forms import Dense, Form
from .graph import ModelGraph


def layer_table(
    graph: ModelGraph,
    forms: Mapping[str, Form],
    cost_models: Mapping[str, CostModel],
    schemes: Mapping[str, str] | None = None,
    realized: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per traced layer: shape, scheme, form, and cost before/after per cost model."""
    schemes = schemes or {}
    realized = set(realized)
    rows = []
    for name, spec in graph.specs.items():
        form = forms.get(name, Dense())
        row = {
            "layer": name,
            "kind": spec.kind,
            "shape": "×".join(map(str, spec.weight_shape)),
            "scheme": schemes.get(name, "—"),
            "form": form.describe(),
            "realized": name in realized,
        }
        for cname, model in cost_models.items():
            if model.unavailable_reason():
                continue
            before, after = model.costs(spec, [Dense(), form]).tolist()
            row[f"{cname}_before"] = before
            row[f"{cname}_after"] = after
        rows.append(row)
    return pd.DataFrame(rows)


def totals(table: pd.DataFrame) -> dict[str, float]:
    """Sum of every ``*_before`` / ``*_after`` column."""
    return {c: float(table[c].sum()) for c in table.columns if c.endswith(("_before", "_after"))}


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned text, with a totals row and after/before ratios."""
    shown = table.drop(columns=["kind"], errors="ignore").copy()
    sums = totals(table)
    total_row = {c: "" for c in shown.columns}
    total_row.update({"layer": "TOTAL", "realized": ""})
    total_row.update(sums)
    shown = pd.concat([shown, pd.DataFrame([total_row])], ignore_index=True)
    for col in shown.columns:
        if col.endswith(("_before", "_after")):
            shown[col] = shown[col].map(_number)
    shown["realized"] = shown["realized"].map(lambda v: "yes" if v is True else ("" if v == "" else "no"))
    text = shown.to_string(index=False)
    ratios = []
    for col in sums:
        if col.endswith("_before") and sums[col]:
            name = col[: -len("_before")]
            ratios.append(f"{name}: {sums[name + '_after'] / sums[col]:.1%} of dense")
    return text + ("\n" + ", ".join(ratios) if ratios else "")


def _number(value: object) -> str:
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4g}"

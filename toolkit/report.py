"""Per-layer tables, totals, and the run report that people read.

:func:`layer_table` prices every traced layer, dense and as compressed, under
each cost model of the run, and returns a pandas DataFrame (saved as CSV by
runs); :func:`format_table` renders it for a terminal with thousands
separators and a totals row.

:func:`write_report` turns a run directory — finished, or still running —
into ``report.md`` and a self-contained ``report.html`` (figures embedded),
plus ``report.csv`` (the per-layer table) and the figures as PNG files: what
was compressed and how, the totals before and after under every cost model,
the metric, rank and cost share per layer, and the LC path. Figures come from
:mod:`lcpress.plots`; the run's files are read by :mod:`lcpress.runinfo`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .costmodel import CostModel
from .document import Bullets, Document, Heading, Image, Paragraph, Table
from .forms import Dense, Form, LayerSpec
from .graph import ModelGraph

log = logging.getLogger("lcpress.report")

#: Cost models every report shows, besides those the tasks use.
REPORTED_COST_MODELS = ("params", "flops", "storage")


def layer_table(
    graph: ModelGraph | Mapping[str, LayerSpec],
    forms: Mapping[str, Form],
    cost_models: Mapping[str, CostModel],
    schemes: Mapping[str, str] | None = None,
    realized: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per traced layer: shape, scheme, form, and cost before/after per cost model.

    Besides the form's short description, every field of the form gets a
    ``form_<field>`` column (``form_rank``, ``form_groups``, a quantizer's
    ``form_bits`` …), so tables and plots read "whatever the form says"
    without knowing the scheme. ``full_rank`` is the rank of the layer's
    weight matrix (in the form's matricization), the reference for ranks.
    """
    specs = graph.specs if isinstance(graph, ModelGraph) else graph
    schemes = schemes or {}
    realized = set(realized)
    rows = []
    for name, spec in specs.items():
        form = forms.get(name, Dense())
        row = {
            "layer": name,
            "kind": spec.kind,
            "shape": "×".join(map(str, spec.weight_shape)),
            "scheme": schemes.get(name, "—"),
            "form": form.describe(),
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
    """Rank of the weight as a matrix: out × in·kh·kw, or in·kh × out·kw for spatial forms."""
    out, cin = spec.out_channels, spec.in_channels // spec.groups
    kh, kw = spec.kernel_size if spec.kind == "conv2d" else (1, 1)
    if getattr(form, "shape", None) == "spatial":
        return min(cin * kh, out * kw)
    return min(out, cin * kh * kw)


def totals(table: pd.DataFrame) -> dict[str, float]:
    """Sum of every ``*_before`` / ``*_after`` column."""
    return {c: float(table[c].sum()) for c in table.columns if c.endswith(("_before", "_after"))}


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned text, with a totals row and after/before ratios."""
    shown = _display_columns(table)
    numbers = [c for c in shown.columns if c.endswith(("_before", "_after")) or c not in table.columns
               or c.startswith("form_")]  # costs, and the form fields (renamed, unless a name was taken)
    sums = totals(table)
    total_row = {c: "" for c in shown.columns}
    total_row.update({"layer": "TOTAL", "realized": ""})
    total_row.update(sums)
    shown = pd.concat([shown, pd.DataFrame([total_row])], ignore_index=True)
    for col in numbers:
        shown[col] = shown[col].map(_number)
    shown["realized"] = shown["realized"].map(lambda v: "yes" if v is True else ("" if v == "" else "no"))
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


def _display_columns(table: pd.DataFrame) -> pd.DataFrame:
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


def _number(value: object) -> str:
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


def _cell(value: object) -> str:
    """Table cells of reports: numbers as :func:`_number`, booleans as yes/no, missing as —."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, (int, float)):
        return _number(value)
    return str(value)


# ------------------------------------------------------------------ run reports
@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    csv: Path | None
    images: list[Path]


def write_report(run_dir: str | Path, *, plots: bool | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html``, ``report.csv`` and the figures into ``run_dir``.

    :param plots: draw figures; ``None`` draws them when matplotlib is
        installed and otherwise says in the report how to get them; ``True``
        makes a missing matplotlib an error.
    """
    from .plots import matplotlib_available
    from .runinfo import read_run

    summary = read_run(run_dir)
    if plots is None:
        plots = matplotlib_available()
        if not plots:
            summary.missing.append("figures: matplotlib is not installed (pip install 'lcpress[demo]')")
    document = run_document(summary, plots=plots)
    path = summary.path
    images = []
    for image in document.images:
        images.append(path / image.filename)
        images[-1].write_bytes(image.data)
    csv = None
    if summary.layers is not None:
        csv = path / "report.csv"
        summary.layers.to_csv(csv, index=False)
    (path / "report.md").write_text(document.markdown())
    (path / "report.html").write_text(document.html())
    return ReportFiles(path / "report.md", path / "report.html", csv, images)


def run_document(summary: Any, *, plots: bool = True) -> Document:
    """The report of a :class:`~lcpress.runinfo.RunSummary` as a :class:`Document`."""
    doc = Document(f"lcpress report: {summary.path.name}")
    doc.add(Paragraph(_status(summary)), Bullets(_config_lines(summary.config)))
    doc.add(Heading("Totals"), Table(_totals_frame(summary), _cell))
    metric = _metric_line(summary)
    if metric:
        doc.add(Paragraph(metric))
    if summary.layers is not None:
        doc.add(Heading("Per layer"), Paragraph(f"From {summary.layers_source}."))
        shown = _display_columns(summary.layers)
        if not summary.finished:
            shown = shown.drop(columns=["realized"], errors="ignore")
        doc.add(Table(shown, _cell))
    if plots:
        doc.add(*_figures(summary))
    if len(summary.history):
        doc.add(Heading("LC history"), Paragraph(
            "One row per LC step (step 0 is the direct compression of the trained weights): μ, the L step's "
            "training loss, ‖w − Δ(θ)‖, the metric of the compressed weights, total costs, seconds."))
        history = summary.history[[c for c in summary.history.columns if not c.startswith("target")]]
        doc.add(Table(history, _cell))
    if summary.missing:
        doc.add(Heading("Not shown"), Bullets(list(summary.missing)))
    return doc


def _figures(summary: Any) -> list[Any]:
    from . import plots

    blocks: list[Any] = []
    table = summary.layers
    if table is not None:
        fig = plots.rank_figure(table)
        if fig is not None:
            blocks.append(Image("report-ranks.png", "Chosen rank per layer", plots.png(fig)))
        fig = plots.form_fields_figure(table, [c for c in form_value_columns(table) if c != "form_rank"])
        if fig is not None:
            blocks.append(Image("report-forms.png", "Form fields per layer (nonzeros, bits …)", plots.png(fig)))
        fig = plots.cost_share_figure(table, _cost_names(table))
        if fig is not None:
            blocks.append(Image("report-costs.png", "Cost share per layer, before and after", plots.png(fig)))
    fig = plots.lc_curve_figure(summary.history, summary.info.get("dense_metric"), summary.metric_name)
    if fig is not None:
        blocks.append(Image("report-lc.png", "LC path: loss, distance to Δ(θ) and metric against μ", plots.png(fig)))
    return [Heading("Figures"), *blocks] if blocks else []


def _cost_names(table: pd.DataFrame) -> list[str]:
    return [c[: -len("_before")] for c in table.columns if c.endswith("_before")]


def _status(summary: Any) -> str:
    planned = summary.steps_planned
    of = f" of {planned}" if planned is not None else ""
    if summary.finished:
        return f"Finished run in {summary.path}: {max(summary.steps_done, 0)}{of} LC steps."
    if summary.steps_done < 0:
        return f"Run in {summary.path} has started; no LC step has finished yet."
    return (f"Run in progress in {summary.path}: LC step {summary.steps_done}{of} done. "
            f"This report shows the run as of that step; run `lcpress report` again for later ones.")


def _config_lines(config: Mapping[str, Any]) -> list[str]:
    lines = []
    for i, task in enumerate(config.get("tasks", [])):
        layers = ", ".join(task.get("layers", []))
        if task.get("exclude"):
            layers += f" (except {', '.join(task['exclude'])})"
        target = task.get("target")
        if target:
            bound = f"{target['ratio']:.0%} of dense" if target.get("ratio") is not None else _number(target["value"])
            how = f"target: {target['cost']} ≤ {bound}"
        else:
            how = f"α = {task.get('alpha', 0)} on {task.get('cost', 'flops')}"
        options = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
        lines.append(f"tasks[{i}]: {task.get('scheme', 'low_rank')}"
                     + (f" ({options})" if options else "") + f" on {layers}; {how}")
    schedule = config.get("schedule") or {}
    if schedule:
        lines.append(f"schedule: {schedule.get('steps')} LC steps, μ from {schedule.get('mu0')} × "
                     f"{schedule.get('factor')} per step"
                     + (", augmented Lagrangian" if schedule.get("augmented_lagrangian") else ""))
    return lines


def _totals_frame(summary: Any) -> pd.DataFrame:
    """Dense and compressed totals per cost model: from the per-layer table, else the last history row."""
    rows = []
    sums = totals(summary.layers) if summary.layers is not None else {}
    for name in _cost_names(summary.layers) if summary.layers is not None else []:
        before, after = sums[f"{name}_before"], sums[f"{name}_after"]
        rows.append({"cost model": name, "dense": before, "compressed": after,
                     "compressed / dense": f"{after / before:.1%}" if before else "—"})
    history = summary.history
    if len(history):  # cost models the table lacks (measured ones, while running): latest totals only
        last = history.iloc[-1]
        for column in history.columns:
            name = column[len("cost_"):]
            if column.startswith("cost_") and name not in {r["cost model"] for r in rows}:
                rows.append({"cost model": name, "dense": float("nan"), "compressed": float(last[column]),
                             "compressed / dense": "—"})
    return pd.DataFrame(rows, columns=["cost model", "dense", "compressed", "compressed / dense"])


def _metric_line(summary: Any) -> str:
    dense = summary.info.get("dense_metric")
    latest = summary.info.get("metric") if summary.finished else None
    if latest is None and len(summary.history) and "metric" in summary.history:
        values = summary.history["metric"].dropna()
        latest = float(values.iloc[-1]) if len(values) else None
    parts = []
    if dense is not None and latest is not None:
        parts.append(f"{summary.metric_name}: dense {dense:.4f} → compressed {latest:.4f} ({latest - dense:+.4f}).")
    elif latest is not None:
        parts.append(f"{summary.metric_name} of the compressed weights: {latest:.4f}.")
    if summary.finished and summary.info.get("max_abs_error") is not None:
        parts.append(f"Realized model vs the dense model holding Δ(θ): max |difference| = "
                     f"{summary.info['max_abs_error']:.2e}.")
    return " ".join(parts)

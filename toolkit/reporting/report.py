"""The run report that people read.

:func:`write_report` turns a run directory — finished, or still running —
into ``report.md`` and a self-contained ``report.html`` (figures embedded),
plus ``report.csv`` (the per-layer table) and the figures as PNG files: what
was compressed and how, the totals before and after under every cost model,
the metric, rank and cost share per layer, and the LC path. The run's files
are read by :mod:`lcpress.reporting.runinfo`, tables come from
:mod:`lcpress.reporting.tables` and figures from :mod:`lcpress.reporting.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from lcpress.atomic import replacing, write_bytes_atomic, write_text_atomic
from lcpress.errors import RunDirectoryError
from lcpress.io.rundir import RunDirectory
from lcpress.reporting import plots as draw
from lcpress.reporting.document import Bullets, Document, Heading, Image, Paragraph, Table
from lcpress.reporting.runinfo import RunSummary, read_run
from lcpress.reporting.tables import (cell, display_columns, form_value_columns, kept_dense_layers,
                                      target_lines, totals)


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
    summary = read_run(run_dir)
    if not RunDirectory(run_dir).is_run():  # report.md, report.html … of a folder lcpress did not make are the user's
        raise RunDirectoryError(f"{str(run_dir)!r} is not an lcpress run directory (it has a history.csv but no "
                                f"run.json of lcpress's), so no report is written into it; give the output_dir of an "
                                f"lcpress run")
    if plots is None:
        plots = draw.matplotlib_available()
        if not plots:
            summary.missing.append("figures: matplotlib is not installed (pip install 'lcpress[demo]')")
    document = run_document(summary, plots=plots)
    path = summary.path
    images = []
    for image in document.images:
        images.append(path / image.filename)
        write_bytes_atomic(images[-1], image.data)
    csv = None
    if summary.layers is not None:
        csv = path / "report.csv"
        with replacing(csv) as tmp:
            summary.layers.to_csv(tmp, index=False)
    write_text_atomic(path / "report.md", document.markdown())
    write_text_atomic(path / "report.html", document.html())
    return ReportFiles(path / "report.md", path / "report.html", csv, images)


def run_document(summary: RunSummary, *, plots: bool = True) -> Document:
    """The report of a :class:`~lcpress.reporting.runinfo.RunSummary` as a :class:`Document`."""
    doc = Document(f"lcpress report: {summary.path.name}")
    last = summary.history.iloc[-1].to_dict() if len(summary.history) else None
    targets = target_lines(summary.config, last, kept_dense_layers(summary.layers))
    doc.add(Paragraph(_status(summary)), Bullets(_config_lines(summary.config) + targets))
    doc.add(Heading("Totals"), Table(_totals_frame(summary), cell))
    metric = _metric_line(summary)
    if metric:
        doc.add(Paragraph(metric))
    if _listed(summary.info, "measured"):
        doc.add(Bullets(_listed(summary.info, "measured")))  # the whole model timed: the sums above are per layer
    if _listed(summary.info, "warnings"):
        doc.add(Heading("Warnings"), Bullets(_listed(summary.info, "warnings")))
    if summary.layers is not None:
        doc.add(Heading("Per layer"), Paragraph(f"From {summary.layers_source}."))
        shown = display_columns(summary.layers)
        if not summary.finished:
            shown = shown.drop(columns=["realized"], errors="ignore")
        doc.add(Table(shown, cell))
    if plots:
        doc.add(*_figures(summary))
    if len(summary.history):
        doc.add(Heading("LC history"), Paragraph(
            "One row per LC step (step 0 is the direct compression of the trained weights): μ, the L step's "
            "training loss, ‖w − Δ(θ)‖, the metric of the compressed weights, total costs, seconds."))
        history = summary.history[[c for c in summary.history.columns if not c.startswith("target")]]
        doc.add(Table(history, cell))
    if summary.missing:
        doc.add(Heading("Not shown"), Bullets(list(summary.missing)))
    return doc


def _figures(summary: RunSummary) -> list[Any]:
    blocks: list[Any] = []
    table = summary.layers
    if table is not None:
        fig = draw.rank_figure(table)
        if fig is not None:
            blocks.append(Image("report-ranks.png", "Chosen rank per layer", draw.png(fig)))
        fig = draw.form_fields_figure(table, [c for c in form_value_columns(table) if c != "form_rank"])
        if fig is not None:
            blocks.append(Image("report-forms.png", "Form fields per layer (nonzeros, bits …)", draw.png(fig)))
        fig = draw.cost_share_figure(table, _cost_names(table))
        if fig is not None:
            blocks.append(Image("report-costs.png", "Cost share per layer, before and after", draw.png(fig)))
    fig = draw.sensitivity_figure(summary.sensitivity, summary.metric_name)
    if fig is not None:
        blocks.append(Image("report-sensitivity.png", "Measured sensitivity: metric lost against relative error",
                            draw.png(fig)))
    fig = draw.lc_curve_figure(summary.history, summary.info.get("dense_metric"), summary.metric_name)
    if fig is not None:
        blocks.append(Image("report-lc.png", "LC path: loss, distance to Δ(θ) and metric against μ", draw.png(fig)))
    return [Heading("Figures"), *blocks] if blocks else []


def _cost_names(table: pd.DataFrame) -> list[str]:
    return [c[: -len("_before")] for c in table.columns if c.endswith("_before")]


def _status(summary: RunSummary) -> str:
    planned = summary.steps_planned
    of = f" of {planned}" if planned is not None else ""
    if summary.finished:
        return f"Finished run in {summary.path}: {max(summary.steps_done, 0)}{of} LC steps."
    if not RunDirectory(summary.path).held():  # its process ended (an error, Ctrl-C, a kill) before the last step
        done = f"after LC step {summary.steps_done}{of}" if summary.steps_done >= 0 else "before its first LC step"
        return (f"Run in {summary.path} stopped {done}; no process is running it. This report shows it as of "
                f"that step; `lcpress compress CONFIG --resume` continues it.")
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
        if task.get("target"):
            how = "a target (below)"
        else:
            how = f"α = {task.get('alpha', 0)} on {task.get('cost', 'flops')}"
        options = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
        lines.append(f"tasks[{i}]: {task.get('scheme', 'low_rank')}"
                     + (f" ({options})" if options else "") + f" on {layers}; {how}")
    schedule = config.get("schedule") or {}
    if schedule:
        lines.append(f"schedule: {schedule.get('steps')} LC steps, μ0 {schedule.get('mu0')}, growth "
                     f"{schedule.get('factor')} per step"
                     + (", augmented Lagrangian" if schedule.get("augmented_lagrangian") else ""))
    finetune = config.get("finetune") or {}
    if finetune.get("steps"):
        lines.append(f"finetune: {finetune['steps']} passes over the training data of the realized model, no penalty"
                     + (f", from lr {finetune['lr']}" if finetune.get("lr") is not None else ""))
    return lines


def _totals_frame(summary: RunSummary) -> pd.DataFrame:
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


def _listed(info: Mapping[str, Any], key: str) -> list[str]:
    """``info[key]`` as a list of lines (run.json of an older run has none)."""
    value = info.get(key)
    return [str(v) for v in value] if isinstance(value, list) else []


def _metric_line(summary: RunSummary) -> str:
    dense = summary.info.get("dense_metric")
    latest = summary.info.get("metric") if summary.finished else None
    if latest is None and len(summary.history) and "metric" in summary.history:
        values = summary.history["metric"].dropna()
        latest = float(values.iloc[-1]) if len(values) else None
    parts = []
    before_tuning = summary.info.get("metric_before_fine_tuning") if summary.finished else None
    tuned = (f", after {summary.info.get('fine_tune_passes')} fine-tuning passes of the realized model (LC's "
             f"last step: {before_tuning:.4f}, as in the history)" if before_tuning is not None else "")
    if dense is not None and latest is not None:
        parts.append(f"{summary.metric_name}: dense {dense:.4f} → compressed {latest:.4f} ({latest - dense:+.4f})"
                     f"{tuned}.")
    elif latest is not None:
        parts.append(f"{summary.metric_name} of the compressed weights: {latest:.4f}.")
    if summary.finished and summary.info.get("max_abs_error") is not None:
        parts.append(f"Realized model vs the dense model holding Δ(θ): max |difference| = "
                     f"{summary.info['max_abs_error']:.2e}.")
    return " ".join(parts)

"""The figures of run reports and sweeps (matplotlib, drawn off-screen).

matplotlib is an optional dependency (the ``[demo]`` and ``[dev]`` extras), so
it is imported only when a figure is drawn, and a missing install is a clear
error. Figures are built on ``matplotlib.figure.Figure`` directly — never
through ``pyplot`` — so drawing a report changes no global backend or state
of a user's session (a notebook keeps its own backend) and works headless.

Every function takes the pandas tables of :mod:`lcpress.report` /
:mod:`lcpress.runinfo` and returns a Figure, or None when the table holds
nothing to draw; :func:`png` turns a Figure into PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from lcpress.errors import LcpressError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BEFORE, AFTER, BASELINE = "#9aa5b1", "#1f6feb", "#d9822b"


def _figure(width: float, height: float) -> "Figure":
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LcpressError("plots need matplotlib: pip install 'lcpress[demo]' (or matplotlib)") from None
    return Figure(figsize=(width, height), layout="constrained")


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def png(fig: "Figure", dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _layer_axis_height(n: int) -> float:
    return max(2.5, 0.6 + 0.24 * n)


def rank_figure(table: pd.DataFrame) -> "Figure | None":
    """Chosen rank per layer against the layer's full rank.

    Only layers that have a rank are drawn: those whose form has one, and
    dense layers (full rank). A layer whose form has no rank (pruned,
    quantized …) is left out and counted in the title.
    """
    if "form_rank" not in table or "full_rank" not in table or table["form_rank"].isna().all():
        return None
    dense = table["form"].str.startswith("dense") if "form" in table else pd.Series(False, index=table.index)
    ranked = table[table["form_rank"].notna() | dense]
    full = ranked["full_rank"].astype(float)
    chosen = ranked["form_rank"].astype(float).fillna(full)
    labels = list(ranked["layer"])
    fig = _figure(7.5, _layer_axis_height(len(labels)))
    ax = fig.add_subplot()
    y = range(len(labels))
    ax.barh(y, full, color=BEFORE, label="full rank (dense)")
    ax.barh(y, chosen, color=AFTER, height=0.5, label="chosen rank")
    for i, (c, f) in enumerate(zip(chosen, full)):
        ax.text(c, i, f" {int(c)}", va="center", fontsize=7)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("rank")
    left_out = len(table) - len(ranked)
    ax.set_title("Rank per layer" + (f" ({left_out} layers without a rank not shown)" if left_out else ""))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def sensitivity_figure(curves: dict[str, dict[str, list[float]]], metric_name: str = "metric") -> "Figure | None":
    """Measured sensitivity (``sensitivity: measured``): metric lost against relative error, one line per layer."""
    if not curves:
        return None
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve["errors"], curve["drops"], marker="o", markersize=3, linewidth=1, label=name)
    ax.set_xlabel("relative error ‖W − Δ‖² / ‖W‖² of the layer alone")
    ax.set_ylabel(f"{metric_name} lost")
    ax.set_title("Measured sensitivity: each layer compressed alone")
    ax.legend(fontsize=7, ncol=2)
    return fig


def form_fields_figure(table: pd.DataFrame, fields: Sequence[str]) -> "Figure | None":
    """One panel per numeric form field (``form_nonzeros``, ``form_bits`` …), over the layers whose form has it.

    ``form_nonzeros`` is drawn against the layer's weight count (from its
    ``shape``); other fields are drawn as they are.
    """
    fields = [f for f in fields if f in table and table[f].notna().any()]
    if not fields:
        return None
    height = max(_layer_axis_height(int(table[f].notna().sum())) for f in fields)
    fig = _figure(4.0 * len(fields) + 1.5, height)
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    for ax, column in zip(axes, fields):
        rows = table[table[column].notna()]
        y = list(range(len(rows)))
        values = rows[column].astype(float)
        if column == "form_nonzeros" and "shape" in rows:
            weights = rows["shape"].map(lambda s: math.prod(int(d) for d in str(s).split("×")))
            ax.barh(y, weights, color=BEFORE, label="weights (dense)")
            ax.legend(loc="lower right", fontsize=8)
        ax.barh(y, values, color=AFTER, height=0.5)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:g}", va="center", fontsize=7)
        ax.set_yticks(y, list(rows["layer"]), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(column[len("form_"):], fontsize=9)
    fig.suptitle("Form per layer", fontsize=10)
    return fig


def cost_share_figure(table: pd.DataFrame, cost_names: Sequence[str]) -> "Figure | None":
    """Each layer's cost before and after, as a share of the dense model's total, one panel per cost model."""
    names = [n for n in cost_names if f"{n}_before" in table and f"{n}_after" in table]
    if not names:
        return None
    labels = list(table["layer"])
    fig = _figure(4.0 * len(names) + 1.5, _layer_axis_height(len(labels)))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    y = list(range(len(labels)))
    for ax, name in zip(axes, names):
        before, after = table[f"{name}_before"].astype(float), table[f"{name}_after"].astype(float)
        dense_total = float(before.sum()) or 1.0
        ax.barh([v - 0.2 for v in y], 100 * before / dense_total, height=0.4, color=BEFORE, label="dense")
        ax.barh([v + 0.2 for v in y], 100 * after / dense_total, height=0.4, color=AFTER, label="compressed")
        ax.set_title(f"{name}: {float(after.sum()) / dense_total:.1%} of dense", fontsize=9)
        ax.set_xlabel("% of the dense model's total")
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Cost share per layer", fontsize=10)
    return fig


def lc_curve_figure(history: pd.DataFrame, dense_metric: float | None = None,
                    metric_name: str = "metric") -> "Figure | None":
    """Training loss, ‖w − Δ(θ)‖ and the metric of the compressed model against μ."""
    if history is None or not len(history) or "mu" not in history:
        return None
    panels = [("train_loss", "training loss (L step)", False), ("distance", "‖w − Δ(θ)‖", True),
              ("metric", f"{metric_name} of Δ(θ)", False)]
    panels = [p for p in panels if p[0] in history and history[p[0]].notna().any()]
    if not panels:
        return None
    fig = _figure(4.0 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mu = history["mu"].astype(float)
    for ax, (column, title, log_y) in zip(axes, panels):
        values = history[column].astype(float)
        ax.plot(mu, values, marker="o", markersize=3, color=AFTER)
        if len(history) and not math.isnan(values.iloc[0]):
            ax.plot(mu.iloc[:1], values.iloc[:1], marker="s", color=BASELINE, linestyle="none",
                    label="direct compression")
            ax.legend(fontsize=7)
        if column == "metric" and dense_metric is not None:
            ax.axhline(dense_metric, color=BEFORE, linestyle="--", label="dense")
            ax.legend(fontsize=7)
        _mu_axis(ax, mu)
        if log_y and (values > 0).all():
            _log_axis(ax, values)
        ax.set_xlabel("μ")
        ax.set_title(title, fontsize=9)
    fig.suptitle("LC path", fontsize=10)
    return fig


def _log_axis(ax: Any, values: pd.Series) -> None:
    """Log-scaled y axis with plain numbers; minor ticks labelled only when the values span under a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    narrow = float(values.max()) < 10 * float(values.min())
    ax.yaxis.set_minor_formatter(plain if narrow else NullFormatter())


def _mu_axis(ax: Any, mu: pd.Series) -> None:
    """Log-scaled μ axis labelled at a few of the run's own μ values (no crowded 10^x minor labels)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    values = sorted(set(float(v) for v in mu))
    ticks = values[:: max(1, math.ceil(len(values) / 5))]
    ax.set_xticks(ticks, [f"{v:.3g}" for v in ticks], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto_figure(points: pd.DataFrame, cost_names: Sequence[str], metric_name: str = "metric") -> "Figure | None":
    """Metric against cost (fraction of dense), one panel per cost model: LC, baseline and dense on the same axes."""
    names = [n for n in cost_names if f"{n}_ratio" in points]
    if not names or not len(points):
        return None
    fig = _figure(4.5 * len(names), 3.6)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    styles: dict[str, dict[str, Any]] = {
        "lc": {"color": AFTER, "marker": "o", "label": "LC (rank selection)"},
        "baseline": {"color": BASELINE, "marker": "^", "label": "uniform truncated SVD + fine-tuning"},
    }
    for ax, name in zip(axes, names):
        for method, style in styles.items():
            rows = points[points["method"] == method].sort_values(f"{name}_ratio")
            if len(rows):
                ax.plot(rows[f"{name}_ratio"], rows["metric"], linestyle="-", **style)
                for _, row in rows.iterrows():
                    ax.annotate(f"{row['target']:g}", (row[f"{name}_ratio"], row["metric"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        dense = points[points["method"] == "dense"]
        if len(dense):
            ax.plot(dense[f"{name}_ratio"], dense["metric"], marker="*", markersize=12, color="black",
                    linestyle="none", label="dense")
        ax.set_xlabel(f"{name} (fraction of dense)")
        ax.set_ylabel(metric_name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{metric_name} against cost (labels: target ratio)", fontsize=10)
    return fig

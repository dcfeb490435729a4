"""What people read: per-layer tables, run reports (Markdown and self-contained HTML), figures.

:mod:`~lcpress.reporting.tables` (layer tables and totals),
:mod:`~lcpress.reporting.runinfo` (what a run directory says, finished or
running), :mod:`~lcpress.reporting.report` (``lcpress report``),
:mod:`~lcpress.reporting.document` (one document, two renderings),
:mod:`~lcpress.reporting.plots` (matplotlib figures).
"""

"""Running compressions: the one-call API and everything around a run.

:mod:`~lcpress.runs.compress` (``lcpress.compress``: plan → LC → realize →
verify → save), :mod:`~lcpress.runs.training` (the built-in L step),
:mod:`~lcpress.runs.distributed` (data-parallel L steps under torchrun),
:mod:`~lcpress.runs.sources` (a config's model and data),
:mod:`~lcpress.runs.sweep` (one run per budget), :mod:`~lcpress.runs.preview`
(costs before a run), :mod:`~lcpress.runs.results` (a finished run's model,
exported), :mod:`~lcpress.runs.demo` (the digits example).
"""

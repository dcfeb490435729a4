"""The module the ``lcpress`` entry point names: it registers the scheme and the cost model.

``pyproject.toml`` declares::

    [project.entry-points.lcpress]
    tucker = "lcpress_tucker.plugin"

so installing the package is all it takes for ``scheme: tucker2`` and
``cost: csv_latency`` to work in any lcpress config.
"""

from __future__ import annotations

import lcpress

from .csv_latency import CsvLatency
from .scheme import Tucker2Scheme


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(Tucker2Scheme)


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(CsvLatency)

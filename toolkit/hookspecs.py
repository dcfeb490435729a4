"""The plugin contract: every hook lcpress calls, one docstring each.

Plugins implement these with ``@lcpress.hookimpl``. Built-in schemes and cost
models register through exactly the same hooks as third-party packages, so
``lcpress/plugins/low_rank.py`` and ``lcpress/costmodels/flops.py`` are working
templates for plugin authors.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("lcpress")
hookimpl = pluggy.HookimplMarker("lcpress")


@hookspec
def lcpress_register_schemes(register: Callable[[type], None]) -> None:
    """Register compression schemes.

    Call ``register(SchemeClass)`` once per scheme. ``SchemeClass`` subclasses
    :class:`lcpress.Scheme`; its ``name`` attribute is the string used in
    configs (``scheme: low_rank``) and must be unique across all plugins.

    :param register: callback that records one scheme class.

    All implementations are called; their results are ignored.
    """


@hookspec
def lcpress_register_cost_models(register: Callable[[type], None]) -> None:
    """Register cost models.

    Call ``register(CostModelClass)`` once per cost model. ``CostModelClass``
    subclasses :class:`lcpress.CostModel`; its ``name`` attribute is the string
    used in configs (``cost: flops``) and must be unique across all plugins.

    :param register: callback that records one cost model class.

    All implementations are called; their results are ignored.
    """

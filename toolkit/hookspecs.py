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


@hookspec
def lcpress_register_commands(register: Callable[..., None]) -> None:
    """Register subcommands of the ``lcpress`` command line.

    Call ``register(name, run, help="…", arguments=None)`` once per command:
    ``lcpress NAME …`` then parses its arguments with ``arguments(parser)``
    (an :class:`argparse.ArgumentParser` to add options to) and calls
    ``run(args)``; an int it returns is the exit code. The name must not be
    taken by a built-in command or another plugin. An :class:`lcpress.LcpressError`
    raised by ``run`` prints as one line, like the built-in commands' errors.

    :param register: callback that records one command.

    All implementations are called; their results are ignored.
    """


@hookspec
def lcpress_register_modules(register: Callable[..., None]) -> None:
    """Allow-list a plugin's realized module classes for pickle-free loading.

    ``lcpress.load`` rebuilds saved models only from classes it knows. A
    scheme whose :meth:`~lcpress.Scheme.realize` returns a module class of its
    own calls ``register(ModuleClass, arguments)`` here, where
    ``arguments(module) -> dict`` returns the JSON-able keyword arguments that
    rebuild an empty ``ModuleClass(**arguments)``; the weights then come from
    the file. Child modules are rebuilt on their own, so ``arguments`` covers
    only the module's own constructor.

    :param register: callback that records one module class.

    All implementations are called; their results are ignored.
    """

"""The module the ``lcpress`` entry point names: everything the package adds to lcpress.

``pyproject.toml`` declares::

    [project.entry-points.lcpress]
    tucker = "lcpress_tucker.plugin"

so installing the package is all it takes for ``scheme: tucker2`` and
``cost: csv_latency`` to work in any lcpress config, for saved models holding
a ``Tucker2Conv2d`` to load without pickle, and for ``lcpress tucker-table``
to check a latency table.
"""

from __future__ import annotations

import lcpress

import argparse

from .csv_latency import CsvLatency
from .module import Tucker2Conv2d
from .scheme import Tucker2Scheme
from .table import read_table


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(Tucker2Scheme)


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(CsvLatency)


@lcpress.hookimpl
def lcpress_register_modules(register) -> None:
    register(Tucker2Conv2d, Tucker2Conv2d.arguments)


@lcpress.hookimpl
def lcpress_register_commands(register) -> None:
    register("tucker-table", check_table, help="check a csv_latency table and list what it covers",
             arguments=_table_arguments)


def _table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the latency CSV (see lcpress_tucker.table)")
    parser.add_argument("--device", help="whose rows, when the table holds several devices")


def check_table(args: argparse.Namespace) -> int:
    """``lcpress tucker-table FILE``: parse the table (errors name the row) and list its measured grids."""
    table = read_table(args.file, args.device)
    print(f"{table.source}: device {table.device or '(unnamed)'}, {len(table.grids)} measured configurations")
    for setting, grid in sorted(table.grids.items(), key=lambda item: item[0].describe()):
        ins, outs = sorted({i for i, _ in grid}), sorted({o for _, o in grid})
        print(f"  {setting.describe()}: in {ins[0]}–{ins[-1]}, out {outs[0]}–{outs[-1]} ({len(grid)} points)")
    return 0

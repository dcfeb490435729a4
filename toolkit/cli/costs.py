"""``lcpress costs CONFIG``: per-layer cost, dense and as the direct compression would choose."""

from __future__ import annotations

import argparse

from lcpress.cli.common import add_quiet, planned_inputs

NAME = "costs"
HELP = "predicted per-layer cost, dense and as the direct compression would choose"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from lcpress.reporting.tables import format_table
    from lcpress.runs.preview import predict_costs

    config, model, example = planned_inputs(args)
    prediction = predict_costs(model, config, example, progress=not args.quiet)
    print(format_table(prediction.table))
    for g, choice in sorted(prediction.selection.items()):
        if choice.budget is not None:
            print(f"tasks[{g}] target: requested {choice.budget:.4g}, achieved {choice.total_cost:.4g}")
    return 0

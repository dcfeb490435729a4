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
    from lcpress.reporting.tables import format_table, target_lines
    from lcpress.runs.preview import predict_costs

    config, model, example, train = planned_inputs(args)
    prediction = predict_costs(model, config, example, calibration=train, progress=not args.quiet)
    print(format_table(prediction.table.drop(columns=["realized"], errors="ignore")))  # a preview realizes nothing
    row = {}
    for g, choice in prediction.selection.items():  # the wording lcpress compress uses for its targets
        if choice.budget is not None:
            row.update({f"target{g}_requested": choice.budget, f"target{g}_achieved": choice.total_cost,
                        f"target{g}_dense": choice.dense_cost})
    for line in target_lines(config.to_dict(), row):
        print(line)
    return 0

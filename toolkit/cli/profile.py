"""``lcpress profile CONFIG``: measure, ahead of a run, every candidate form the config's tasks can choose."""

from __future__ import annotations

import argparse

from lcpress.cli.common import add_quiet, planned_inputs

NAME = "profile"
HELP = "measure, ahead of a run, every candidate form the config's tasks can choose"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from lcpress.runs.preview import profile_costs

    config, model, example, _ = planned_inputs(args)
    print(profile_costs(model, config, example, progress=not args.quiet).summary())
    return 0

"""``lcpress sweep CONFIG --targets …``: one compression per target ratio, and the accuracy–cost curve."""

from __future__ import annotations

import argparse

from lcpress.cli.common import add_quiet, inputs, read_config_file
from lcpress.errors import LcpressError

NAME = "sweep"
HELP = "one compression per target ratio, and the accuracy–cost curve"


def ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.1,0.3, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"target ratios must be in (0, 1], got {text!r}")
    return values


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (its task groups need a 'target')")
    p.add_argument("--targets", type=ratios, help="comma-separated target ratios, e.g. 0.1,0.2,0.3,0.5 "
                                                  "(default: the config's sweep.targets)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also run uniform-ratio truncated SVD + fine-tuning (default: the config's sweep.baseline)")
    p.add_argument("--output-dir", help="override the config's output_dir (runs go into subdirectories)")
    p.add_argument("--force", action="store_true", help="redo runs the output directory already holds")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from lcpress.runs.distributed import launched
    from lcpress.runs.sweep import sweep

    if launched():  # every rank would run the whole sweep, and the ranks would meet at each point's run lock
        raise LcpressError("lcpress sweep runs in one process: start it without torchrun (a single point runs on "
                           "several ranks with `torchrun … -m lcpress compress`, its ratio set in the config)")
    data = read_config_file(args.config, args.output_dir)
    config, model, loaders = inputs(data, args.quiet)
    result = sweep(model, config, args.targets, loaders=loaders, baseline=args.baseline, force=args.force,
                   progress=not args.quiet)
    print(result.summary())
    print(f"saved: {result.files['markdown']} ({', '.join(p.name for k, p in result.files.items() if k != 'markdown')} "
          f"beside it; one run directory per point)")
    return 0

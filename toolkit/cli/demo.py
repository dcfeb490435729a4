"""``lcpress demo``: train a CNN on scikit-learn's digits and compress it (no files, no network)."""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from lcpress.cli.common import add_quiet, run_compression
from lcpress.errors import ConfigError

NAME = "demo"
HELP = "train a CNN on scikit-learn's digits and compress it (no files, no network)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", help="keep the run here (default: a temporary directory)")
    p.add_argument("--force", action="store_true", help="replace the demo run --output-dir holds")
    p.add_argument("--resume", action="store_true", help="continue the interrupted demo run --output-dir holds "
                                                         "(with the same --ratio and --steps)")
    p.add_argument("--ratio", type=float, default=0.3, help="FLOPs target as a fraction of dense (default 0.3)")
    p.add_argument("--steps", type=int, default=None, help="LC steps (default 10)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from lcpress.runs.demo import DEMO_CONFIG

    config = copy.deepcopy(DEMO_CONFIG)
    config["tasks"][0]["target"]["ratio"] = args.ratio
    if args.steps is not None:
        config["schedule"]["steps"] = args.steps
    if args.output_dir:
        config["output_dir"] = str(Path(args.output_dir).resolve())
        return run_compression(config, resume=args.resume, force=args.force, quiet=args.quiet)
    if args.resume:
        raise ConfigError("--resume continues the demo run an --output-dir holds; give that --output-dir")
    with tempfile.TemporaryDirectory(prefix="lcpress-demo-") as tmp:
        config["output_dir"] = str(Path(tmp) / "run")
        code = run_compression(config, resume=False, force=False, quiet=args.quiet, keep_note=False)
    print("next: `lcpress demo --output-dir runs/demo` keeps the run (model file, report with plots); "
          "`lcpress compress config.yaml` compresses your own model (README: Configuration)")
    return code

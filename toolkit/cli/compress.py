"""``lcpress compress CONFIG``: run the compression a YAML config describes."""

from __future__ import annotations

import argparse

from lcpress.cli.common import add_quiet, read_config_file, run_compression

NAME = "compress"
HELP = "run the compression a YAML config describes"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint (with the "
                                                          "config the run started with)")
    p.add_argument("--extend", action="store_true", help="with --resume: continue a run, finished or not, for more LC "
                                                          "steps (raise schedule.steps; nothing else may change)")
    p.add_argument("--force", action="store_true", help="replace a run the output directory already holds")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    data = read_config_file(args.config, args.output_dir)
    return run_compression(data, resume=args.resume, force=args.force, quiet=args.quiet, extend=args.extend)

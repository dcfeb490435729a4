"""``lcpress report RUN_DIR``: report.md and report.html for a run directory, finished or running."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "write report.md and report.html for a run directory (finished or running)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run's output_dir")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    from lcpress.reporting.report import write_report

    files = write_report(args.run_dir, plots=not args.no_plots)
    print(f"wrote {files.markdown} and {files.html}" + (f" (table: {files.csv.name})" if files.csv else ""))
    return 0

"""What several commands share: reading a config file, building its model and data, running a compression."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from pathlib import Path
from typing import Any

from lcpress.config import LCConfig, config_file
from lcpress.errors import ConfigError


def wrapped(text: str, indent: str) -> str:
    """``text`` wrapped to the terminal's width (at most 100 columns), every line after ``indent``.

    Option help runs to hundreds of characters; unwrapped, a listing in an 80-column terminal is unreadable.
    """
    width = max(40, min(100, shutil.get_terminal_size((100, 24)).columns))
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")


def read_config_file(path_text: str, output_dir: str | None = None) -> dict[str, Any]:
    """The mapping of a config file (paths in it relative to its folder); ``--output-dir`` is relative to here."""
    data = config_file(path_text)
    if output_dir:
        data["output_dir"] = str(Path(output_dir).resolve())
    return data


def inputs(data: dict[str, Any], quiet: bool) -> tuple[LCConfig, Any, tuple[Any, Any]]:
    """The config, model and loaders a CLI command works on."""
    import torch

    from lcpress.core.measured import default_cache_dir
    from lcpress.core.plan import load_config
    from lcpress.runs.distributed import main_first
    from lcpress.runs.sources import build_loaders, build_model

    config = load_config(data)
    if config.model is None or config.data is None:
        raise ConfigError("the CLI needs 'model' and 'data' sections (the Python API takes objects instead)")
    train_loader, eval_loader = build_loaders(config.data, config.seed, config.base_dir)
    cache = default_cache_dir() / "models"  # lcpress's own cache folder, never the user's
    with main_first():  # under torchrun, rank 0 trains and caches a builtin model; the others load it
        model = build_model(config.model, train_loader, cache, progress=not quiet, base_dir=config.base_dir,
                            seed=config.seed)
    generator = getattr(train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(config.seed)  # same data order whether or not the model was just trained
    return config, model, (train_loader, eval_loader)


def planned_inputs(args: argparse.Namespace) -> tuple[LCConfig, Any, Any, Any]:
    """Config, model, the example input to trace and the training batches, for commands that plan a run."""
    from lcpress.runs.compress import example_batch

    config, model, loaders = inputs(read_config_file(args.config), args.quiet)
    return config, model, example_batch(None, loaders, next(model.parameters()).device), loaders[0]


def run_compression(data: dict[str, Any], *, resume: bool, force: bool, quiet: bool, keep_note: bool = True,
                    extend: bool = False) -> int:
    """``lcpress compress`` / ``lcpress demo``: run, print the summary, write the report."""
    from lcpress.runs import distributed
    from lcpress.runs.compress import compress

    _refuse_early(data, resume=resume, force=force, extend=extend)
    with distributed.process_group(str(data.get("device", "cpu"))):  # joins torchrun's ranks, if any
        config, model, loaders = inputs(data, quiet or not distributed.is_main())
        result = compress(model, config, loaders=loaders, resume=resume, extend=extend, force=force,
                          progress=not quiet)
        main = distributed.is_main()
    if not main:  # rank 0 prints and writes the report
        return 0
    print(result.summary(config.metric))
    if keep_note and result.run_dir is not None:
        files = result.write_report()
        print(f"saved: {result.run_dir / 'model.safetensors'}; report: {files.markdown} and {files.html.name} "
              f"(history.csv and layers.csv beside them)")
    return 0


def _refuse_early(data: dict[str, Any], *, resume: bool, force: bool, extend: bool) -> None:
    """What the run directory would refuse, and a run that would keep nothing, said before the model is built.

    Building a built-in model trains it (seconds to minutes); a run that then cannot start, or whose result
    the CLI could not keep, should not cost that.
    """
    from lcpress.config import parse_config
    from lcpress.io.rundir import RunDirectory

    config = parse_config(data)
    if not config.output_dir:
        raise ConfigError("output_dir: the CLI keeps its result in a run folder; set output_dir in the config or "
                          "pass --output-dir (lcpress.compress in Python can run without one)")
    RunDirectory(config.path(config.output_dir)).check(resume=resume, force=force, extend=extend)

"""``lcpress`` on the command line: demo, compress, sweep, report, export, profile, costs, plugins, info, options.

Every command is a thin shell over the Python API; errors lcpress raises on
purpose print as one clear line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import LcpressError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (LcpressError, FileExistsError) as exc:
        print(f"lcpress: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lcpress: interrupted; the last checkpoint is intact (resume with --resume)", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcpress", description="Compress trained PyTorch models with the LC algorithm.")
    parser.add_argument("--version", action="version", version=f"lcpress {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("demo", help="train a CNN on scikit-learn's digits and compress it (no files, no network)")
    p.add_argument("--output-dir", help="keep the run here (default: a temporary directory)")
    p.add_argument("--ratio", type=float, default=0.3, help="FLOPs target as a fraction of dense (default 0.3)")
    p.add_argument("--steps", type=int, default=None, help="LC steps (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compress", help="run the compression a YAML config describes")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--force", action="store_true", help="replace a run the output directory already holds")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("sweep", help="one compression per target ratio, and the accuracy–cost curve")
    p.add_argument("config", help="YAML config file (its task groups need a 'target')")
    p.add_argument("--targets", type=_ratios, help="comma-separated target ratios, e.g. 0.1,0.2,0.3,0.5 "
                                                   "(default: the config's sweep.targets)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also run uniform-ratio truncated SVD + fine-tuning (default: the config's sweep.baseline)")
    p.add_argument("--output-dir", help="override the config's output_dir (runs go into subdirectories)")
    p.add_argument("--force", action="store_true", help="redo runs the output directory already holds")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write report.md and report.html for a run directory (finished or running)")
    p.add_argument("run_dir", help="the run's output_dir")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a finished run's realized model (ONNX), checked in onnxruntime")
    p.add_argument("run_dir", help="the run's output_dir")
    p.add_argument("--onnx", required=True, metavar="FILE", help="write the model to this ONNX file")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--input-shape", type=_shape, help="input shape to trace, e.g. 1,3,224,224 "
                                                     "(default: the example input the run recorded)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to the input shape's")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("profile", help="measure, ahead of a run, every candidate form the config's tasks can choose")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("costs", help="predicted per-layer cost, dense and as the direct compression would choose")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")
    p.set_defaults(func=cmd_costs)

    p = sub.add_parser("plugins", help="list every scheme and cost model, with the package it came from")
    p.add_argument("--options", action="store_true", help="also list each plugin's options")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("info", help="print the manifest of a saved model file")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("options", help="list every config key with its default and meaning")
    p.add_argument("--markdown", action="store_true", help="as markdown tables (docs/config.md)")
    p.set_defaults(func=cmd_options)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_CONFIG

    config = copy.deepcopy(DEMO_CONFIG)
    config["tasks"][0]["target"]["ratio"] = args.ratio
    if args.steps is not None:
        config["schedule"]["steps"] = args.steps
    if args.output_dir:
        config["output_dir"] = args.output_dir
        return _run(config, resume=False, force=False, quiet=args.quiet)
    with tempfile.TemporaryDirectory(prefix="lcpress-demo-") as tmp:
        config["output_dir"] = str(Path(tmp) / "run")
        return _run(config, resume=False, force=False, quiet=args.quiet, keep_note=False)


def cmd_compress(args: argparse.Namespace) -> int:
    data = _read_yaml(args.config)
    if args.output_dir:
        data["output_dir"] = args.output_dir
    return _run(data, resume=args.resume, force=args.force, quiet=args.quiet)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    data = _read_yaml(args.config)
    if args.output_dir:
        data["output_dir"] = args.output_dir
    config, model, loaders = _inputs(data, args.quiet)
    result = sweep(model, config, args.targets, loaders=loaders, baseline=args.baseline, force=args.force,
                   progress=not args.quiet)
    print(result.summary())
    print(f"saved: {result.files['markdown']} ({', '.join(p.name for k, p in result.files.items() if k != 'markdown')} "
          f"beside it; one run directory per point)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    files = write_report(args.run_dir, plots=not args.no_plots)
    print(f"wrote {files.markdown} and {files.html}" + (f" (table: {files.csv.name})" if files.csv else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    done = export_run(args.run_dir, args.onnx, overwrite=args.force, input_shape=args.input_shape,
                      dynamic_batch=not args.static_batch, opset=args.opset)
    check = ("onnxruntime not installed: not checked" if done.max_abs_error is None
             else f"onnxruntime vs torch: max |difference| = {done.max_abs_error:.2e}")
    print(f"wrote {done.path} ({check})")
    return 0


def _shape(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 1,3,224,224, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.1,0.3, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"target ratios must be in (0, 1], got {text!r}")
    return values


def _inputs(data: dict[str, Any], quiet: bool):
    """The config, model and loaders a CLI command works on."""
    import torch

    from .config import load_config
    from .distributed import main_first
    from .errors import ConfigError
    from .sources import build_loaders, build_model

    config = load_config(data)
    if config.model is None or config.data is None:
        raise ConfigError("the CLI needs 'model' and 'data' sections (the Python API takes objects instead)")
    train_loader, eval_loader = build_loaders(config.data, config.seed)
    cache = Path(config.output_dir).parent / ".lcpress-cache" if config.output_dir else None
    with main_first():  # under torchrun, rank 0 trains and caches a builtin model; the others load it
        model = build_model(config.model, train_loader, cache, progress=not quiet)
    generator = getattr(train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(config.seed)  # same data order whether or not the model was just trained
    return config, model, (train_loader, eval_loader)


def _read_yaml(path_text: str) -> dict[str, Any]:
    import yaml

    from .errors import ConfigError

    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    # 'module:function' factories may live next to the config (examples/minilm/minilm.py)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)
    return data


def _run(data: dict[str, Any], *, resume: bool, force: bool, quiet: bool, keep_note: bool = True) -> int:
    from . import distributed
    from .api import compress

    with distributed.process_group(str(data.get("device", "cpu"))):  # joins torchrun's ranks, if any
        config, model, loaders = _inputs(data, quiet or not distributed.is_main())
        result = compress(model, config, loaders=loaders, resume=resume, force=force, progress=not quiet)
        main = distributed.is_main()
    if not main:  # rank 0 prints and writes the report
        return 0
    print(result.summary(config.metric))
    if keep_note and result.run_dir is not None:
        files = result.write_report()
        print(f"saved: {result.run_dir / 'model.safetensors'}; report: {files.markdown} and {files.html.name} "
              f"(history.csv and layers.csv beside them)")
    return 0


def _planned(args: argparse.Namespace):
    """Config, model, planned tasks and cost models, and an engine for the direct-compression step."""
    from .api import _example_input, plan
    from .engine import LCEngine

    config, model, loaders = _inputs(_read_yaml(args.config), args.quiet)
    graph, tasks, cost_models = plan(model, config, _example_input(None, loaders, model_device(model)))
    engine = LCEngine(model, tasks, config.schedule, None, graph=graph, report_costs=cost_models,
                      seed=config.seed, progress=not args.quiet)
    return config, graph, tasks, cost_models, engine


def model_device(model):
    return next(model.parameters()).device


def cmd_profile(args: argparse.Namespace) -> int:
    """Measure every form a C step could ask a measured cost model about."""
    import pandas as pd

    from .measured import MeasuredCostModel
    from .progress import progress_bar

    config, graph, tasks, cost_models, engine = _planned(args)
    measured = {n: m for n, m in cost_models.items() if isinstance(m, MeasuredCostModel)}
    if not measured:
        print("no measured cost model in this config (cpu_latency, gpu_latency, gpu_energy …): nothing to profile")
        return 0
    from .scheme import CStepContext

    rows = []
    for batch in engine._batches():
        scheme = tasks[batch[0]].scheme
        items = [(tasks[i].weight().detach(), CStepContext(mu=config.schedule.mu0, spec=tasks[i].spec)) for i in batch]
        for i, candidates in zip(batch, scheme.candidates_many(items)):
            task = tasks[i]
            if candidates is None or task.spec is None:
                continue
            for name, model in measured.items():
                with progress_bar(total=len(candidates.forms), desc=f"{name} {task.name}", enabled=not args.quiet) as bar:
                    for form in candidates.forms:
                        model.costs(task.spec, [form])
                        bar.update(1)
                costs = model.costs(task.spec, candidates.forms).tolist()  # with what was measured again
                best = min(range(len(costs)), key=costs.__getitem__)
                rows.append({"cost model": name, "layer": task.name, "forms": len(costs), "dense": costs[0],
                             "cheapest": candidates.forms[best].describe(), "cheapest cost": costs[best]})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, model in measured.items():
        again = f" ({model.remeasured} measured again: out of line with their neighbours)" if model.remeasured else ""
        print(f"{name}: {model.measurements} measured now{again}, {model.table.hits} from the table {model.table.path}")
    return 0


def cmd_costs(args: argparse.Namespace) -> int:
    """Per-layer cost, dense and in the forms the direct-compression step chooses."""
    from .report import format_table, layer_table

    config, graph, tasks, cost_models, engine = _planned(args)
    engine.c_step(0, config.schedule.mu0)
    schemes = {name: t.scheme.name for t in tasks for name in t.layers}
    print(format_table(layer_table(graph, engine.forms(), cost_models, schemes)))
    for g, choice in sorted(engine.selection.items()):
        if choice.budget is not None:
            print(f"tasks[{g}] target: requested {choice.budget:.4g}, achieved {choice.total_cost:.4g}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    registry = get_registry()
    rows = []
    for kind, table in (("scheme", registry.schemes), ("cost model", registry.cost_models)):
        for name in sorted(table.classes):
            cls, origin = table.classes[name], table.origins[name]
            row = {"kind": kind, "name": name, "package": origin.package, "version": origin.version,
                   "plugin": origin.plugin, "class": f"{cls.__module__}.{cls.__qualname__}"}
            if kind == "cost model":
                reason = cls().unavailable_reason()
                row["available"] = "yes" if reason is None else f"no: {reason}"
            row["options"] = [list(map(str, r)) for r in cls.Options.describe()]
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) + 2
    for kind in ("scheme", "cost model"):
        print(f"{kind}s:")
        for r in (r for r in rows if r["kind"] == kind):
            extra = f"  [{r['available']}]" if r.get("available", "yes") != "yes" else ""
            print(f"  {r['name']:<{width}}{r['package']} {r['version']}  ({r['plugin']}){extra}")
            if args.options:
                for name, tp, default, help_ in r["options"]:
                    print(f"      {name}: {tp} = {default}  — {help_}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .modelfile import read_manifest

    manifest = read_manifest(args.file)
    print(f"lcpress model file, written by lcpress {manifest['lcpress_version']} (torch {manifest['torch_version']})")
    rebuild = "yes" if manifest.get("architecture") else f"no (needs the model class: {', '.join(manifest['not_rebuildable'])})"
    print(f"loads without the model's code: {rebuild}")
    for layer in manifest.get("layers", []):
        state = "realized" if layer.get("realized") else f"dense ({layer.get('reason', '')})"
        print(f"  {layer['name']}: {layer['scheme']} {_form_text(layer.get('form') or {})} — {state}")
    return 0


def _form_text(form: dict) -> str:
    """A manifest's form as text: ``low_rank(rank=8) + sparse(nonzeros=40)`` for a form made of parts."""
    if "parts" in form:
        return " + ".join(_form_text(part) for part in form["parts"])
    fields = ", ".join(f"{k}={v}" for k, v in form.items() if k != "kind" and v is not None)
    return f"{form.get('kind', '')}({fields})" if fields else form.get("kind", "")


def cmd_options(args: argparse.Namespace) -> int:
    print(options_reference(markdown=args.markdown))
    return 0


def options_reference(markdown: bool = False) -> str:
    """Every config key with type, default and help (docs/config.md embeds the markdown form)."""
    from .config import DataConfig, LCConfig, ModelConfig, ScheduleConfig, TargetConfig, TaskConfig, TrainConfig

    sections = (("(top level)", LCConfig), ("tasks[]", TaskConfig), ("tasks[].target", TargetConfig),
                ("schedule", ScheduleConfig), ("train", TrainConfig), ("model", ModelConfig), ("data", DataConfig))
    lines: list[str] = []
    for title, cls in sections:
        rows = cls.describe()
        if markdown:
            lines += [f"### `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
            lines += [f"| `{n}` | {tp.replace('|', 'or')} | `{_short(d)}` | {h} |" for n, tp, d, h in rows]
            lines.append("")
        else:
            lines.append(f"{title}:")
            lines += [f"  {n}: {tp} = {_short(d)}\n      {h}" for n, tp, d, h in rows]
    lines.append("Scheme options: `lcpress plugins --options`.")
    return "\n".join(lines)


def _short(default: Any) -> str:
    return "{…}" if isinstance(default, dict) else str(default)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

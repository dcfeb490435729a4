"""Trade-off sweeps: one compression per budget, and the accuracy–cost curve.

People choose a compression by looking at what each budget costs in
accuracy. :func:`sweep` runs one LC compression per target ratio — each in
its own run directory ``<output_dir>/target-<ratio>`` — from the same trained
dense model, and collects metric and costs into one table and figure. The
target ratio of every task group that has a ``target`` is replaced by the
sweep's; groups without one stay as configured.

With ``baseline``, every budget also gets the usual one-shot alternative:
truncated SVD at a *uniform* cost ratio — every layer keeps the largest rank
whose cost is at most the ratio of its own dense cost (the ``low_rank`` scheme
with a fixed rank per layer) — then fine-tuned, as a realized model, for as
many L-step passes as the LC run trains (``<output_dir>/baseline-<ratio>``).
Both curves and the dense model share the same axes.

Finished runs whose directory holds the same config are reused, so adding a
target to a sweep runs only the new one; an interrupted run resumes from its
checkpoint. Measured cost tables persist per device (:mod:`lcpress.measured`),
so later runs measure nothing again.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_args

import pandas as pd
import torch
from torch import nn

from lcpress.atomic import replacing, write_bytes_atomic, write_text_atomic
from lcpress.config import LCConfig
from lcpress.core.costmodel import CostModel
from lcpress.core.forms import LayerSpec, LowRank
from lcpress.core.plan import load_config, plan
from lcpress.errors import ConfigError, RunDirectoryError
from lcpress.io.rundir import RunDirectory
from lcpress.linalg.matrices import Shape
from lcpress.progress import status_line
from lcpress.reporting import plots
from lcpress.reporting.document import Document, Image, Paragraph, Table, markdown_table
from lcpress.reporting.report import write_report
from lcpress.reporting.tables import cell, full_rank
from lcpress.runs.compress import compress, example_batch

#: The scheme the baseline uses: fixed-rank truncated SVD.
BASELINE_SCHEME = "low_rank"


@dataclass(repr=False)
class SweepResult:
    """Every point of a sweep, and the files it wrote."""

    points: pd.DataFrame
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line, as :class:`CompressionResult` shows itself; ``.points`` and ``.summary()`` have the numbers."""
        methods = ", ".join(f"{n} {m}" for m, n in self.points["method"].value_counts(sort=False).items())
        return (f"SweepResult(points={len(self.points)} ({methods}), output_dir={str(self.output_dir)!r}, "
                f"files={sorted(self.files)}; .summary() for the table)")

    def summary(self) -> str:
        return markdown_table(self.points.drop(columns=["run"]), cell)


@dataclass
class _Inputs:
    """What every run of a sweep is given, as :func:`lcpress.compress` takes it."""

    train_fn: Any = None
    eval_fn: Any = None
    loaders: tuple[Any, Any] | None = None
    example_input: Any = None
    calibration: Any = None

    def compress(self, model: nn.Module, config: LCConfig, **kwargs: Any) -> None:
        if self.loaders is not None:
            _reseed(self.loaders, config.seed)  # every run sees the data in the order one `lcpress compress` would
        compress(copy.deepcopy(model), config, self.train_fn, self.eval_fn, loaders=self.loaders,
                 example_input=self.example_input, calibration=self.calibration, **kwargs)


def sweep(
    model: nn.Module,
    config: LCConfig | dict[str, Any] | str | Path,
    targets: Sequence[float] | None = None,
    *,
    train_fn: Any = None,
    eval_fn: Any = None,
    loaders: tuple[Any, Any] | None = None,
    example_input: Any = None,
    calibration: Any = None,
    baseline: bool | None = None,
    force: bool = False,
    progress: bool = True,
    reports: bool = True,
) -> SweepResult:
    """Compress a copy of ``model`` once per target ratio and tabulate metric against cost.

    Each run is a :func:`lcpress.compress` call with the same functions or loaders, so a notebook sweeps with the
    ``train_fn`` and ``eval_fn`` it compresses with (and ``example_input``), or with ``loaders``.

    :param model: the trained dense model; it is not changed (each run gets a copy).
    :param config: the run config; ``output_dir`` is where the runs and the curve go.
    :param targets: target ratios; default ``config.sweep.targets``.
    :param train_fn: one L step (as for :func:`lcpress.compress`); it also fine-tunes the baseline. Every run
        trains its own copy of the model, so the function must build its optimizer from the model it is given.
    :param eval_fn: the metric on the sweep's axis; needed unless ``loaders`` give the built-in accuracy.
    :param loaders: ``(train_loader, eval_loader)`` for the built-in trainer and metric.
    :param example_input: one input batch, to trace the model (default: the first batch of ``loaders``).
    :param calibration: batches for μ0 and BatchNorm statistics, as for :func:`lcpress.compress`.
    :param baseline: also run the uniform truncated-SVD baseline; default ``config.sweep.baseline``.
    :param force: redo runs whose directories already hold results.
    :param reports: write each run's report (see :func:`lcpress.reporting.report.write_report`).
    """
    config = load_config(config)
    targets = list(targets if targets is not None else config.sweep.targets)
    baseline = config.sweep.baseline if baseline is None else baseline
    _check(config, targets)
    if eval_fn is None and loaders is None:
        raise ConfigError("a sweep plots a metric against cost: pass eval_fn=… (with train_fn=… and example_input=…), "
                          "or loaders=(train, eval) for the built-in trainer and accuracy")
    inputs = _Inputs(train_fn, eval_fn, loaders, example_input, calibration)
    out = config.path(config.output_dir)  # type: ignore[arg-type]
    _refuse_foreign_tables(out)
    rows: list[dict[str, Any]] = []
    dense_metric = None
    for i, target in enumerate(targets, 1):
        status_line(f"sweep {i}/{len(targets)}: LC at target ratio {target:g}", enabled=progress)
        info = _lc_run(model, config, target, out / f"target-{target:g}", inputs, force, progress, reports)
        rows.append(_point("lc", target, info, f"target-{target:g}"))
        dense_metric = info.get("dense_metric", dense_metric)
        if baseline:
            status_line(f"sweep {i}/{len(targets)}: baseline at target ratio {target:g}", enabled=progress)
            info = _baseline_run(model, config, target, out / f"baseline-{target:g}", inputs, force, progress, reports)
            rows.append(_point("baseline", target, info, f"baseline-{target:g}"))
    cost_names = [c[: -len("_ratio")] for c in rows[0] if c.endswith("_ratio")]
    rows.insert(0, {"method": "dense", "target": 1.0, "metric": dense_metric,
                    **{f"{n}_ratio": 1.0 for n in cost_names}, "run": ""})
    points = pd.DataFrame(rows)
    primary = _primary_cost(config)
    points["pareto"] = _pareto(points, f"{primary}_ratio" if f"{primary}_ratio" in points else f"{cost_names[0]}_ratio")
    result = SweepResult(points, out)
    result.files = _write(result, config, cost_names, primary)
    return result


def _check(config: LCConfig, targets: list[float]) -> None:
    if not config.output_dir:
        raise ConfigError("output_dir: a sweep needs a directory for its runs and its curve")
    if not targets:
        raise ConfigError("sweep.targets: give the target ratios to sweep (config `sweep: {targets: [0.2, 0.5]}` "
                          "or `--targets 0.2,0.5`)")
    for t in targets:
        if not 0 < t <= 1:
            raise ConfigError(f"sweep targets must be in (0, 1], got {t}")
    if not any(task.target is not None for task in config.tasks):
        raise ConfigError("tasks: a sweep varies the target ratio of task groups, but no group has a 'target'; "
                          "add e.g. `target: {cost: flops, ratio: 0.5}` to the groups the sweep should vary")


def _primary_cost(config: LCConfig) -> str:
    return next(task.target.cost for task in config.tasks if task.target is not None)


def with_target(config: LCConfig, ratio: float, output_dir: Path) -> LCConfig:
    """``config`` with every task group's target ratio set to ``ratio`` (a 'value' target becomes a ratio)."""
    data = config.to_dict()
    for task in data["tasks"]:
        if task.get("target") is not None:
            task["target"] = {"cost": task["target"]["cost"], "ratio": ratio, "value": None}
    data["output_dir"] = str(output_dir)
    data.pop("sweep", None)  # one point is one compression: the sweep's own settings do not shape it
    return LCConfig.from_dict(data)


def _reseed(loaders: tuple[Any, Any], seed: int) -> None:
    """The training loader's generator seeded as a single `lcpress compress` seeds it."""
    generator = getattr(loaders[0], "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


#: What the start of each file a sweep writes holds when the sweep wrote it.
SWEEP_FILES = {"sweep.md": b"# lcpress sweep:", "sweep.html": b"lcpress sweep:", "sweep.csv": b"method,target,"}


def _refuse_foreign_tables(out: Path) -> None:
    """A sweep replaces its own tables and figure only: files of those names that it did not write are the user's."""
    ours = {name: (out / name).is_file() and marker in _start(out / name) for name, marker in SWEEP_FILES.items()}
    foreign = [name for name in SWEEP_FILES if (out / name).exists() and not ours[name]]
    if (out / "sweep.png").exists() and not ours["sweep.md"]:
        foreign.append("sweep.png")
    if foreign:
        raise RunDirectoryError(f"{str(out)!r} holds {', '.join(foreign)}, which lcpress did not write and the sweep "
                                f"would replace; move them, or choose another output_dir")


def _start(path: Path) -> bytes:
    """The first 4 KB of a file, where a sweep's own tables name themselves."""
    with open(path, "rb") as fh:
        return fh.read(4096)


def _forcing(run_dir: Path, force: bool) -> bool:
    """A point run afresh may replace a run of lcpress's own only; a folder of the user's is refused unless --force."""
    return force or RunDirectory(run_dir).is_run()


def _existing(run_dir: Path, config: LCConfig, force: bool, done_key: str = "") -> str:
    """'reuse' a finished run of the same config, 'resume' an unfinished one, else 'fresh'."""
    directory = RunDirectory(run_dir)
    info = directory.info()
    if force or not info:
        return "fresh"
    same = _point_config(info.get("config")) == _point_config(config.to_dict())
    if not same:
        raise RunDirectoryError(f"{str(run_dir)!r} holds a run of another config; use --force to redo the sweep's "
                                f"runs, or choose another output_dir")
    if directory.finished() and (not done_key or info.get(done_key)):
        return "reuse"
    return "resume" if directory.checkpoint_path.exists() and not done_key else "fresh"


def _point_config(config: Any) -> Any:
    """A point's config as compared for reuse: JSON values, without the sweep's own section (adding a target or
    the baseline to a sweep changes that section, not the runs already done)."""
    plain = json.loads(json.dumps(config, default=str))
    if isinstance(plain, dict):
        plain.pop("sweep", None)
    return plain


def _lc_run(model, config, target, run_dir, inputs: _Inputs, force, progress, reports) -> dict[str, Any]:
    cfg = with_target(config, target, run_dir)
    state = _existing(run_dir, cfg, force)
    if state != "reuse":
        inputs.compress(model, cfg, resume=state == "resume", force=state == "fresh" and _forcing(run_dir, force),
                        progress=progress)
        if reports:
            write_report(run_dir)
    return RunDirectory(run_dir).info()


def uniform_rank(spec: LayerSpec, cost_model: CostModel, ratio: float, shape: str = "channel") -> int:
    """The largest rank whose cost is at most ``ratio`` × the layer's dense cost (at least 1)."""
    budget = ratio * cost_model.dense_cost(spec)
    low, high = 1, full_rank(spec, LowRank(1, shape))  # type: ignore[arg-type]
    while low < high:  # costs grow with the rank: bisect for the last rank within budget
        mid = (low + high + 1) // 2
        if float(cost_model.costs(spec, [LowRank(mid, shape)])[0]) <= budget:  # type: ignore[arg-type]
            low = mid
        else:
            high = mid - 1
    return low


def baseline_config(model: nn.Module, config: LCConfig, ratio: float, example_input: Any, output_dir: Path) -> LCConfig:
    """The baseline's config: one fixed-rank truncated-SVD task per layer of every targeted group, no LC steps."""
    cfg = with_target(config, ratio, output_dir)
    planned = plan(model, cfg, example_input)
    tasks, cost_models = planned.tasks, planned.cost_models
    data = cfg.to_dict()
    new_tasks = []
    for g, group in enumerate(cfg.tasks):
        if group.target is None:
            new_tasks.append(data["tasks"][g])
            continue
        cost_model = cost_models[group.target.cost]
        shape = group.options.get("shape") if group.options.get("shape") in get_args(Shape) else "channel"
        for task in (t for t in tasks if t.group == g):
            if task.spec is None:
                raise ConfigError(f"tasks[{g}]: the baseline compresses layer by layer; 'shared: true' groups "
                                  f"have no per-layer rank (set sweep.baseline: false)")
            rank = uniform_rank(task.spec, cost_model, ratio, shape)
            new_tasks.append({"layers": [task.name], "scheme": BASELINE_SCHEME,
                              "options": {"rank": rank, "shape": shape}, "cost": group.cost})
    data["tasks"] = new_tasks
    data["schedule"] = dict(data["schedule"], steps=0)
    # trained as a realized model for the same passes over the data, at the same learning rates, as the LC run
    # (at finetune.lr where one is set: the rate the user gives thin layers trained directly)
    data["finetune"] = {"steps": config.schedule.steps + config.finetune.steps,
                        **({"lr": config.finetune.lr} if config.finetune.lr is not None else {})}
    return LCConfig.from_dict(data)


def _baseline_run(model, config, target, run_dir, inputs: _Inputs, force, progress, reports) -> dict[str, Any]:
    device = torch.device(config.device)
    example = example_batch(inputs.example_input, inputs.loaders, device)
    cfg = baseline_config(copy.deepcopy(model).to(device), config, target, example, run_dir)
    if _existing(run_dir, cfg, force, done_key="fine_tuned") == "reuse":
        return RunDirectory(run_dir).info()
    inputs.compress(model, cfg, force=_forcing(run_dir, force), progress=progress)
    RunDirectory(run_dir).update_info(fine_tuned=True, fine_tune_passes=cfg.finetune.steps)
    if reports:
        write_report(run_dir)
    return RunDirectory(run_dir).info()


def _point(method: str, target: float, info: dict[str, Any], run: str) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "target": target, "metric": info.get("metric")}
    sums = info.get("totals") or {}
    for key, before in sums.items():
        if key.endswith("_before"):
            name = key[: -len("_before")]
            row[f"{name}_ratio"] = sums[f"{name}_after"] / before if before else float("nan")
    for key, value in sums.items():
        if key.endswith("_after"):
            row[key[: -len("_after")]] = value
    row["run"] = run
    return row


def _pareto(points: pd.DataFrame, cost: str) -> list[bool]:
    """True where no other point is at most as costly and at least as good, and better in one."""
    values = list(zip(points[cost].astype(float), points["metric"].astype(float)))
    flags = []
    for i, (c, m) in enumerate(values):
        dominated = any(c2 <= c and m2 >= m and (c2 < c or m2 > m) for j, (c2, m2) in enumerate(values) if j != i)
        flags.append(not dominated)
    return flags


def _write(result: SweepResult, config: LCConfig, cost_names: list[str], primary: str) -> dict[str, Path]:
    out = result.output_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "sweep.csv", "markdown": out / "sweep.md", "html": out / "sweep.html"}
    with replacing(files["csv"]) as tmp:
        result.points.to_csv(tmp, index=False)
    names = [primary] + [n for n in cost_names if n != primary]
    doc = Document(f"lcpress sweep: {out.name}")
    doc.add(Paragraph(f"{config.metric} against cost, one LC run per target ratio of {primary}"
                      + (", with the uniform truncated-SVD baseline fine-tuned for the same passes" if
                         (result.points["method"] == "baseline").any() else "")
                      + ". Ratios are achieved costs as fractions of the dense model; `pareto` marks points "
                        f"no other point beats on both {primary} and {config.metric}."))
    doc.add(Table(result.points, cell))
    if plots.matplotlib_available():
        fig = plots.pareto_figure(result.points, names, config.metric)
        if fig is not None:
            doc.add(Image("sweep.png", f"{config.metric} against cost", plots.png(fig)))
            files["png"] = out / "sweep.png"
            write_bytes_atomic(files["png"], doc.images[-1].data)
    else:
        doc.add(Paragraph("The figure needs matplotlib: pip install 'lcpress[demo]'."))
    write_text_atomic(files["markdown"], doc.markdown())
    write_text_atomic(files["html"], doc.html())
    return files

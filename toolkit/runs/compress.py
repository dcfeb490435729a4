"""``lcpress.compress``: the whole pipeline in one call.

config → trace → tasks → LC engine (DC, L/C steps, checkpoints) → realize →
verify → report → save. Like ``torchao.quantize_``, the model is changed in
place: on return its compressed layers are realized modules. The CLI is a thin
shell over this function.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
import math
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from lcpress.atomic import replacing
from lcpress.config import LCConfig, TrainConfig
from lcpress.core.engine import CalibrateFn, EvalFn, LCEngine, LStep, TrainFn, check_restorable, evaluated
from lcpress.core.graph import ModelGraph
from lcpress.core.plan import Plan, Task, load_config, plan, refuse_unloaded
from lcpress.core.realize import (RealizedLayer, eval_output, load_compressed, mismatch_warning,
                                  realize_and_verify)
from lcpress.core.scheme import State
from lcpress.core.surgery import call_model, module_modes, restore_modes, uncompiled
from lcpress.errors import ConfigError, LcpressError, RunDirectoryError, listed
from lcpress.progress import status_line
from lcpress.io.checkpoint import FileCheckpointer
from lcpress.io.modelfile import save
from lcpress.io.rundir import RunDirectory, changed_keys
from lcpress.nn.codecs import DecodedLayer
from lcpress.reporting.runinfo import plan_record
from lcpress.reporting.tables import format_table, kept_dense_layers, layer_table, target_lines, totals
from lcpress.core.costmodel import CostModel, batch_text
from lcpress.core.measured import MeasuredCostModel
from lcpress.core.schedule import FALLBACK_MU0, convergence_problem
from lcpress.runs import distributed
from lcpress.runs.batchnorm import batchnorm_layers, recalibrate
from lcpress.runs.training import LOSSES, METRICS, SupervisedTrainer, fixed_batches, gradient_norm, to_device

log = logging.getLogger("lcpress")



@dataclass(repr=False)
class CompressionResult:
    """What a compression returns: the realized model and everything measured."""

    model: nn.Module
    history: pd.DataFrame
    layers: pd.DataFrame
    records: list[RealizedLayer]
    states: list[State]
    tasks: list[Task]
    graph: ModelGraph
    dense_metric: float | None
    metric: float | None
    max_abs_error: float
    config: LCConfig
    run_dir: Path | None = None
    totals: dict[str, float] = field(default_factory=dict)
    #: the metric of the compressed model before ``finetune`` trained the realized model (None: no fine-tuning)
    metric_before_finetune: float | None = None
    #: what the run should tell its user to change (not converged, a large loss of accuracy …)
    warnings: list[str] = field(default_factory=list)
    #: the whole model's measured latency, dense and realized, when a target is a measured cost
    measured: list[str] = field(default_factory=list)
    #: ``sensitivity: measured``: each task's curve, {"errors": relative errors, "drops": metric lost}, by task name
    sensitivity: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        """A few lines, not the tensors the fields hold: what a notebook shows for ``result``."""
        # the tasks' weight layers (a channel task also rebuilds the norms beside them: records, not layers)
        names = {name for task in self.tasks for name in task.layers}
        realized = sum(1 for r in self.records if r.realized and r.name in names)
        parts = [f"model={type(self.model).__name__}", f"layers={len(names)} compressed ({realized} realized)"]
        if self.dense_metric is not None and self.metric is not None:
            parts.append(f"metric={self.dense_metric:.4f} → {self.metric:.4f}")
        for cost in ("params", "flops", "storage"):
            before, after = self.totals.get(f"{cost}_before"), self.totals.get(f"{cost}_after")
            if before and after is not None:
                parts.append(f"{cost}={after / before:.1%} of dense")
        if self.run_dir is not None:
            parts.append(f"run_dir={str(self.run_dir)!r}")
        if self.warnings:
            parts.append(f"warnings={len(self.warnings)}")
        return f"CompressionResult({', '.join(parts)}; .summary() for the per-layer table)"

    def summary(self, metric_name: str = "metric") -> str:
        """The per-layer table, totals and metrics, as text."""
        lines = [format_table(self.layers)]
        if self.dense_metric is not None and self.metric is not None:
            tuned = "" if self.metric_before_finetune is None else \
                f" (after LC {self.metric_before_finetune:.4f}, then fine-tuned)"
            lines.append(f"{metric_name}: dense {self.dense_metric:.4f} → compressed {self.metric:.4f}{tuned}")
        lines += target_lines(self.config.to_dict(), self.history.iloc[-1].to_dict() if len(self.history) else None,
                              kept_dense_layers(self.layers))
        lines.append(f"realized model vs Δ(θ): max |difference| = {self.max_abs_error:.2e}")
        lines += self.measured
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def write_report(self, plots: bool | None = None):
        """Write report.md / report.html into the run directory (see :func:`lcpress.write_report`)."""
        from lcpress.reporting.report import write_report

        if self.run_dir is None:
            raise LcpressError("this run had no output_dir; reports are written into a run directory")
        return write_report(self.run_dir, plots=plots)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the realized model (see :func:`lcpress.save`)."""
        return save(self.model, path, config=self.config.to_dict(), overwrite=overwrite)


def compress(
    model: nn.Module,
    config: LCConfig | dict[str, Any] | str | Path,
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
    *,
    loaders: tuple[Any, Any] | None = None,
    example_input: Any = None,
    calibration: Any = None,
    resume: bool = False,
    extend: bool = False,
    force: bool = False,
    progress: bool = True,
) -> CompressionResult:
    """Compress ``model`` in place with the LC algorithm and return the result.

    :param model: a trained model; its compressed layers are replaced in place,
        and it is handed back in the mode (train or eval) it came in.
    :param config: an :class:`LCConfig`, a dict of the YAML structure, or a YAML path.
    :param train_fn: ``train_fn(model, penalty, step)`` runs one L step: the user's
        training loop with ``penalty()`` added to the loss. Default: the built-in
        supervised trainer over ``loaders[0]`` (config ``train`` section).
    :param eval_fn: ``eval_fn(model) -> float``, e.g. test accuracy; run on the
        compressed weights after every step, with the model in eval mode (its
        mode restored after). Default: the config's ``metric``
        (top-1 accuracy, or cosine similarity to targets) on ``loaders[1]``.
    :param loaders: ``(train_loader, eval_loader)`` for the defaults above.
    :param example_input: an input of the model, traced to learn layer shapes
        (and priced by cost models at its batch size). A tuple is passed as
        positional arguments and a dict as keyword ones (``model(**batch)``); a
        model whose forward takes one dict gets ``(batch,)``. Default: one sample of
        the first batch of the eval (else train) loader, else of ``calibration``.
    :param calibration: batches of ``(input, target)`` — or of inputs — (a loader, a list, or one batch) that
        lcpress reads, in a fixed order and without gradients, to re-estimate
        BatchNorm statistics for the compressed weights and to measure μ0
        (``schedule.mu0: auto``; that needs targets, and batches of inputs
        alone start at a fixed μ0 with a warning), and, for a scheme that measures error on layer
        outputs (``low_rank`` with ``error: output``), to collect its first
        ``calibration_batches`` batches' layer inputs before the direct
        compression. Default: ``loaders[0]``. Never the evaluation data.
    :param resume: continue the run in ``config.output_dir`` from its checkpoint;
        the config must be the one the run started with (every changed key is
        listed otherwise).
    :param extend: with ``resume``, continue a run — finished or not — for
        more LC steps: only ``schedule.steps`` may differ, and must be larger;
        ``run.json`` records the extension.
    :param force: replace the run ``config.output_dir`` holds (only lcpress's
        own files are ever removed; a folder lcpress did not create is written
        into only with ``force``, and none of its files is replaced).

    Inside an initialised ``torch.distributed`` process group (torchrun) the L
    steps run data-parallel, the C step on rank 0, and only rank 0 writes the
    run directory: see :mod:`lcpress.distributed`.
    """
    config = load_config(config)
    passed, model = model, uncompiled(model)  # a torch.compile'd model: its layers keep the user's names
    modes = module_modes(model)  # each submodule's train/eval mode, handed back as it came (a frozen BatchNorm stays)
    device = distributed.local_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use device: cpu")
    refuse_unloaded(model)  # before .to(): a model on the meta device cannot move (planning checks the values)
    model.to(device)
    _refuse_unpaired(loaders)
    calibration = None if calibration is None else _one_or_many(calibration)
    _refuse_one_shot(loaders, calibration)
    example_input = example_batch(example_input, loaders, device, calibration)
    if distributed.active() and train_fn is None and loaders is not None:
        loaders = (distributed.shard_loader(loaders[0], config.seed), loaders[1])
    progress = progress and distributed.is_main()
    finetune_fn = _finetune_fn(train_fn, loaders, config, device, progress)
    train_fn, eval_fn = _default_fns(train_fn, eval_fn, loaders, config, device, progress)
    train_fn = distributed.data_parallel(train_fn, model)
    data = calibration if calibration is not None else (loaders[0] if loaders is not None else None)
    normalize = _batchnorm_hook(model, config, data, device)
    probe = gradient_probe(config, data, device)
    calibrate = calibrate_fn(data, config, device)

    try:
        planned = plan(model, config, example_input)
    finally:
        restore_modes(model, modes)  # tracing runs the model in eval mode
    _refuse_untrainable(model, planned.tasks, config)
    timed = _timed_targets(config, planned.cost_models)

    run_dir = RunDirectory(config.path(config.output_dir)) if config.output_dir else None
    if resume and run_dir is None:
        raise ConfigError("output_dir: resuming needs the run directory of the run to continue")
    if extend and not resume:
        raise ConfigError("extend continues a run: pass resume=True too (CLI: --resume --extend)")
    if resume and force:
        raise ConfigError("resume=True continues the run and force=True replaces it: pass one of them (CLI: --resume "
                          "or --force)")
    setup = _Setup(model, config, planned, train_fn, eval_fn, finetune_fn, normalize, probe, example_input, progress,
                   timed, calibrate)
    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:  # the run seeds torch's generators itself (config.seed); the caller's are as they were afterwards
        with _holding(run_dir), torch.random.fork_rng(devices=rng_devices):
            resuming, extension = distributed.on_main(lambda: _prepare(run_dir, config, resume, force, extend)
                                                      if run_dir else (False, None))
            result = _run(setup, run_dir, resuming, extension)
    finally:
        restore_modes(model, modes)  # the modes the model came in, even after an error: L steps train it
    result.model = passed
    return result


def _dense_metric(model: nn.Module, eval_fn: EvalFn | None, resumed: RunDirectory | None) -> float | None:
    """The metric of the model before compression: measured now, or, when resuming, as the run first measured it.

    A resumed run's model may be the object an interrupted run was training (a notebook after Ctrl-C): its
    weights are the last L step's, and measuring them would overwrite the baseline every drop is judged by.
    """
    if resumed is not None and "dense_metric" in resumed.info():
        return resumed.info()["dense_metric"]
    return evaluated(model, eval_fn) if eval_fn is not None else None


def _refuse_untrainable(model: nn.Module, tasks: list[Task], config: LCConfig) -> None:
    """LC's L steps train the compressed weights themselves; say before training when one cannot be trained so.

    A frozen weight could never move towards Δ(θ); direct compression (no L steps) compresses it. A parametrized
    one (weight norm, spectral norm, ``torch.nn.utils.parametrize``, torch's pruning hooks) is recomputed from
    other tensors at every call, so the penalty would pull on a copy, and even without L steps the Δ(θ) written
    into it would be recomputed away: every evaluation and the check of the realized model would see the dense
    layer.
    """
    from torch.nn.utils import parametrize

    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    for task in tasks:
        for layer in task.layers:
            module = model.get_submodule(layer)
            if parametrize.is_parametrized(module, "weight"):
                kinds = ", ".join(type(p).__name__ for p in module.parametrizations["weight"])
                raise ConfigError(
                    f"tasks[{task.group}]: layer {layer!r} has a parametrized weight ({kinds}), which LC's L steps "
                    f"cannot train towards its compressed form and lcpress cannot write Δ(θ) into; fold it into a "
                    f"plain weight first (torch.nn.utils.parametrize.remove_parametrizations("
                    f"model.get_submodule({layer!r}), 'weight'))")
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and not isinstance(weight, nn.Parameter):  # a hook recomputes it
                raise ConfigError(_computed_weight(task, layer, module))
        frozen = [names[id(p)] for p in task.params if id(p) in names and not p.requires_grad]
        if frozen and config.schedule.steps > 0:
            raise ConfigError(
                f"tasks[{task.group}]: {frozen[0]} is frozen (requires_grad=False), but LC's L steps train the "
                f"weights they compress towards their compressed form; unfreeze it for the run "
                f"(model.get_parameter({frozen[0]!r}).requires_grad_(True)), leave its layer out of the tasks, "
                f"or compress directly with schedule.steps: 0")


def _computed_weight(task: Task, layer: str, module: nn.Module) -> str:
    """Why a layer whose ``weight`` is no parameter of the model (a forward pre-hook computes it) cannot be trained."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        how = f"torch.nn.utils.prune.remove(model.get_submodule({layer!r}), 'weight')"
        what = "torch.nn.utils.prune's weight_orig × weight_mask"
    else:
        how, what = "make it a plain nn.Parameter", "a hook"
    return (f"tasks[{task.group}]: layer {layer!r} has a weight computed before every call ({what}), not a "
            f"parameter LC's L steps can train towards its compressed form or lcpress can write Δ(θ) into; fold it "
            f"first ({how})")


@dataclass
class _Setup:
    """Everything :func:`compress` resolved before the run: the model, its plan, and the functions it calls."""

    model: nn.Module
    config: LCConfig
    planned: Plan
    train_fn: TrainFn | None
    eval_fn: EvalFn | None
    finetune_fn: TrainFn | None
    normalize: Any  # re-estimates BatchNorm statistics, or None
    probe: Any  # measures ‖∇L‖ for mu0: auto, or None
    example_input: Any
    progress: bool
    timed: dict[str, MeasuredCostModel]
    calibrate: CalibrateFn | None = None  # runs training batches forward, for output-space metrics


def _run(setup: _Setup, run_dir: RunDirectory | None, resuming: bool,
         extension: dict[str, Any] | None = None) -> CompressionResult:
    """The run itself, once the run directory is held and ready.

    A resumed run reads its checkpoint before it writes anything: an unreadable checkpoint, or one another config
    wrote, is refused with run.json as it was (an extension is recorded only once the checkpoint is read).
    """
    model, config, example_input = setup.model, setup.config, setup.example_input
    train_fn, eval_fn = setup.train_fn, setup.eval_fn
    graph, tasks, cost_models = setup.planned.graph, setup.planned.tasks, setup.planned.cost_models
    resumed = _read_checkpoint(run_dir, config) if resuming else None
    if resumed is not None:  # another architecture or other layers: refused while run.json is as it was
        check_restorable(model, tasks, resumed[0], resumed[1]["engine"])
    if extension is not None:
        distributed.on_main(lambda: run_dir.update_info(status="running", **extension))
    dense_copy = copy.deepcopy(model) if setup.timed and distributed.is_main() else None
    checkpointer = FileCheckpointer(run_dir.checkpoint_path, config.to_dict()) if run_dir and config.checkpoint else None

    torch.manual_seed(config.seed)
    dense_metric = _dense_metric(model, eval_fn, run_dir if resuming else None)
    if run_dir is not None and distributed.is_main():  # what `lcpress report` needs while the run is running
        run_dir.update_info(plan=plan_record(graph, tasks), dense_metric=dense_metric,
                            example_input=input_record(example_input))
    engine_class = distributed.DistributedLCEngine if distributed.active() else LCEngine
    engine = engine_class(model, tasks, config.schedule, train_fn, eval_fn, graph=graph, cost_models=cost_models,
                          seed=config.seed, checkpointer=checkpointer, progress=setup.progress,
                          history_csv=run_dir.file("history.csv") if run_dir else None,
                          before_eval=setup.normalize, gradient_norm=setup.probe, calibrate=setup.calibrate)
    if resumed is not None:
        tensors, meta = resumed
        engine.restore(tensors, meta["engine"])
        log.info("resuming %s after LC step %d", run_dir.path, engine.next_step - 1)
    engine.run()
    try:
        result = _finish(model, engine, graph, cost_models, config, example_input, dense_metric, run_dir,
                         setup.finetune_fn, eval_fn, setup.normalize)
    except BaseException as exc:
        if engine.checkpointed is not None:
            log.error("finishing the run stopped (%s) after its last LC step; the checkpoint after LC step %d is "
                      "intact: continue with resume=True and the dense model the run started from (this model "
                      "object may hold realized layers now; CLI: lcpress compress --resume)",
                      type(exc).__name__, engine.checkpointed)
        raise
    if dense_copy is not None:
        slower: list[str] = []
        result.measured = measured_latency(setup.timed, dense_copy, model, example_input, slower=slower)
        for warning in slower:
            log.warning("%s", warning)
        result.warnings += slower
        if run_dir is not None:  # the report shows the whole model as measured, beside the per-layer prices
            run_dir.update_info(measured=result.measured, warnings=result.warnings)
    return result


@contextlib.contextmanager
def _holding(run_dir: RunDirectory | None) -> Iterator[None]:
    """Hold the run directory's lock (rank 0, for every rank) for the block."""
    if run_dir is None:
        yield
        return
    distributed.on_main(run_dir.acquire)
    try:
        yield
    finally:
        if distributed.is_main():
            run_dir.release()


def calibrate_fn(data: Any, config: LCConfig, device: torch.device) -> CalibrateFn | None:
    """Forward passes over the first ``calibration_batches`` training batches, in a fixed order."""
    if data is None:
        return None

    def calibrate(model: nn.Module) -> None:
        for batch in islice(fixed_batches(data), config.calibration_batches):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            call_model(model, to_device(inputs, device))  # only the layers' inputs matter, not the output

    return calibrate


def _prepare(run_dir: RunDirectory, config: LCConfig, resume: bool, force: bool,
             extend: bool) -> tuple[bool, dict[str, Any] | None]:
    """Ready the run directory; when resuming, the config must be the recorded one (``extend``: more steps only).

    Returns whether the run resumes, and the run.json fields an extension records once its checkpoint is read.
    """
    resuming = run_dir.prepare(resume=resume, force=force, config=config.to_dict(), extend=extend)
    return resuming, (_check_same_config(run_dir, config, extend) if resuming else None)


#: Config keys a resumed run may differ in: where the run lives, and where its config file lives (a moved project)
RELOCATABLE = ("output_dir", "base_dir")


def _read_checkpoint(run_dir: RunDirectory, config: LCConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The run's checkpoint, refused if another config wrote it (a checkpoint copied in from another run)."""
    tensors, meta = FileCheckpointer(run_dir.checkpoint_path, {}).load()
    written = meta.get("config")
    if not isinstance(written, dict):  # every checkpoint lcpress writes records its config
        raise RunDirectoryError(
            f"{str(run_dir.checkpoint_path)!r} records no config, so it cannot be checked as this run's own "
            f"checkpoint (lcpress writes one into every checkpoint); put back this run's own checkpoint, or start "
            f"afresh (--force)")
    changes = [c for c in changed_keys(_as_today(written), config.to_dict(), ignore=RELOCATABLE)
               if not c.startswith("schedule.steps:")]  # an extension changes steps before its first checkpoint
    if changes:
        raise RunDirectoryError(
            f"{str(run_dir.checkpoint_path)!r} was written by a run of another config than {str(run_dir.path)!r} "
            f"records (changed: {'; '.join(changes)}), so resuming would mix two runs; put back this run's own "
            f"checkpoint, or start afresh (--force)")
    return tensors, meta


def _as_today(recorded: dict[str, Any]) -> dict[str, Any]:
    """A config a run recorded, with today's defaults filled in where an older lcpress wrote it, to compare."""
    with contextlib.suppress(LcpressError):
        return LCConfig.from_dict(recorded).to_dict()
    return recorded


def _check_same_config(run_dir: RunDirectory, config: LCConfig, extend: bool) -> dict[str, Any] | None:
    info = run_dir.info()
    recorded = info.get("config")
    if not isinstance(recorded, dict):
        raise RunDirectoryError(f"{str(run_dir.path)!r}: run.json records no config, so a resumed run could not be "
                                f"checked against it; start afresh (--force)")
    recorded = _as_today(recorded)
    current = config.to_dict()
    changes = changed_keys(recorded, current, ignore=RELOCATABLE)
    before, after = (recorded.get("schedule") or {}).get("steps"), config.schedule.steps
    extensions = list(info.get("extensions") or [])
    unfinished = info.get("status") != "finished"
    if extend and after == before and unfinished and extensions and extensions[-1].get("to_steps") == after:
        extend = False  # the same command again, after the extension was interrupted: it is recorded, resume it
    if extend:
        changes = [c for c in changes if not c.startswith("schedule.steps:")]
        if not isinstance(before, int) or after <= before:
            raise RunDirectoryError(f"--extend continues a run for more LC steps: set schedule.steps above the run's "
                                    f"{before} (now {after})")
    if changes:
        hint = (" To add LC steps to the run, change only schedule.steps and pass --extend."
                if any(c.startswith("schedule.steps:") for c in changes) else "")
        raise RunDirectoryError(
            f"{str(run_dir.path)!r} holds a run of another config, and --resume continues a run with the config it "
            f"started with. Changed: {'; '.join(changes)}. Put those back, or start a new run (another output_dir, "
            f"or --force to replace this one).{hint}")
    if not extend:
        return None
    extensions.append({"from_steps": before, "to_steps": after,
                       "at": datetime.datetime.now().isoformat(timespec="seconds")})
    return {"config": current, "extensions": extensions}


def _timed_targets(config: LCConfig, cost_models: dict[str, CostModel]) -> dict[str, MeasuredCostModel]:
    """The measured cost models the run's targets bound: the whole model is timed on them at the end."""
    names = {t.target.cost for t in config.tasks if t.target is not None}
    return {n: m for n, m in cost_models.items() if n in names and isinstance(m, MeasuredCostModel)}


def measured_latency(models: dict[str, MeasuredCostModel], dense: nn.Module, compressed: nn.Module,
                     example_input: Any, rounds: int = 3, slower: list[str] | None = None) -> list[str]:
    """One line per cost model: the whole dense and compressed model measured, interleaved, fastest of ``rounds``.

    ``slower`` collects a warning for every cost model under which the compressed model measured no faster
    than the dense one: the layer prices the C step chose by did not hold for the whole model.
    """
    lines = []
    for name, cost_model in models.items():
        before, after = [], []
        for _ in range(rounds):  # alternate, so a busy moment slows both, not one
            before.append(cost_model.measure_model(dense, example_input))
            after.append(cost_model.measure_model(compressed, example_input))
        if None in before or None in after:
            continue
        b, a = min(before), min(after)
        at = batch_text(cost_model, example_input.shape[0] if isinstance(example_input, torch.Tensor) else None)
        lines.append(f"measured {name} of the whole model{at}: dense {b:.4g} {cost_model.unit} → compressed "
                     f"{a:.4g} {cost_model.unit} ({a / b:.1%} of dense)")
        if slower is not None and a >= b:
            slower.append(f"the compressed model measured no faster than the dense one under {name}{at} ({a:.4g} "
                          f"against {b:.4g} {cost_model.unit}): the layer prices it was chosen by do not hold here. "
                          f"Prices measured on a busy machine are often the cause: measure on a quiet one (for "
                          f"cpu_latency, clock: thread with threads: 1), and look at the table with lcpress profile")
    return lines


def _batchnorm_hook(model: nn.Module, config: LCConfig, data: Any, device: torch.device):
    """What re-estimates BatchNorm statistics for Δ(θ), or None (no BatchNorm, switched off, or no data)."""
    norms = batchnorm_layers(model)
    if not norms or not config.batchnorm.recalibrate:
        return None
    if data is None:
        log.warning("the model has %d BatchNorm layers, but lcpress has no training batches to re-estimate their "
                    "statistics for the compressed weights, so they keep the dense model's: pass "
                    "loaders=(train, eval) or calibration=loader (or set batchnorm.recalibrate: false)", len(norms))
        return None
    return lambda m: recalibrate(m, data, config.batchnorm.batches, device)


def gradient_probe(config: LCConfig, data: Any, device: torch.device):
    """‖∇ training loss‖ for ``mu0: auto``, or None (a number was given, or there are no batches to measure on).

    Measured for direct compression too (``schedule.steps: 0``) when there are batches: an ``alpha`` then weighs
    cost against error at the μ a run with L steps starts from, and means the same in both.
    """
    if config.schedule.mu0 != "auto" or (config.schedule.steps == 0 and data is None):
        return None  # direct compression alone needs μ only for α, which the batches given measure it for
    if data is None:
        log.warning("schedule.mu0 is 'auto' but lcpress has no training batches to measure it on (a train_fn and no "
                    "loaders): starting at μ0 = %g; pass loaders= or calibration=, or set schedule.mu0", FALLBACK_MU0)
        return None
    loss_fn = LOSSES[config.train.loss]

    def probe(model: nn.Module, params: list[nn.Parameter]) -> float:
        try:
            return gradient_norm(model, params, data, loss_fn, device=device)
        except LcpressError as exc:  # the built-in loss cannot read this model's output (a train_fn of your own can)
            raise LcpressError(f"schedule.mu0 'auto' measures the gradient of train.loss ({config.train.loss}) on "
                               f"training batches, and could not: {str(exc).split(';')[0]}. Set schedule.mu0 to a number (e.g. 1e-3), "
                               f"or make the model's output a tensor train.loss takes") from None

    return probe


def _one_or_many(batches: Any) -> Any:
    """``calibration=`` as batches: one batch alone (a tensor, a dict, an (inputs, targets) pair) becomes [batch].

    A list or loader is batches already. A tuple is one pair when it holds two tensors of one batch size whose
    second is integer or has another shape (labels, regression or distillation targets); otherwise (two tensors
    of one shape, which two batches of inputs also are) it too is batches: an autoencoder's pair goes as [(X, X)].
    """
    if isinstance(batches, (torch.Tensor, dict)):
        return [batches]
    if isinstance(batches, tuple) and len(batches) == 2 and all(isinstance(t, torch.Tensor) for t in batches):
        inputs, targets = batches
        if inputs.dim() and targets.dim() and len(inputs) == len(targets) and (
                not targets.is_floating_point() or targets.shape != inputs.shape):
            return [batches]  # two batches of inputs would have one shape; (X, X) alone stays ambiguous: [(X, X)]
    return batches


def _layer_records(model: nn.Module, records: list) -> list[dict[str, Any]]:
    """This run's layer records, after those of an earlier compression of the same model that it left in place.

    Compressing a compressed model (low rank, then quantize the thin layers) keeps the first run's records, so
    a saved file still names the original layers and loads into the original architecture.
    """
    new = [r.to_dict() for r in records]
    replaced = {r["name"] for r in new}
    present = {name for name, _ in model.named_modules(remove_duplicate=False)}
    earlier = [r for r in getattr(model, "lcpress_layers", []) if r["name"] not in replaced and r["name"] in present]
    return earlier + new


def _finish(model, engine: LCEngine, graph, cost_models, config, example_input, dense_metric, run_dir,
            finetune_fn=None, eval_fn=None, normalize=None) -> CompressionResult:
    states = list(engine.states)
    load_compressed(engine.tasks, states)  # the model now computes with Δ(θ) …
    if normalize is not None:
        normalize(model)  # … with BatchNorm statistics of its own, saved with it …
    expected = eval_output(model, example_input)  # … and its output is what the realized model must match
    records, max_err = realize_and_verify(model, engine.tasks, states, example_input, expected, graph.aliases,
                                          graph.specs, cost_models)  # before fine-tuning moves the realized weights
    model.lcpress_layers = _layer_records(model, records)  # set now: a failed fine-tuning leaves a realized model
    tuned_metric = _fine_tune(model, finetune_fn, eval_fn, config, normalize, engine.progress)
    schemes = {name: t.scheme.name for t in engine.tasks for name in t.layers}
    kept = {r.name: r.reason for r in records if not r.realized}
    table = layer_table(graph, engine.forms(), cost_models, schemes, [r.name for r in records if r.realized], kept)
    history = engine.history_frame()
    metric = history["metric"].iloc[-1] if "metric" in history else None
    metric = None if metric is None else float(metric)
    result = CompressionResult(model, history, table, records, states, engine.tasks, graph, dense_metric,
                               metric if tuned_metric is None else tuned_metric, max_err, config, None, totals(table),
                               metric if tuned_metric is not None else None)
    result.sensitivity = {engine.tasks[i].name: curve.to_dict() for i, curve in sorted(engine.curves.items())}
    result.warnings = run_warnings(config, engine.history, dense_metric, result.metric,
                                   getattr(eval_fn, "metric_name", "metric"))
    mismatch = mismatch_warning(max_err, expected)
    if mismatch:
        result.warnings.append(mismatch)
    for warning in result.warnings:
        log.warning("%s", warning)
    if run_dir is not None:
        result.run_dir = run_dir.path
        tuned = {} if tuned_metric is None else {"metric_before_fine_tuning": metric, "fine_tuned": True,
                                                 "fine_tune_passes": config.finetune.steps}

        def write() -> None:
            with replacing(run_dir.file("layers.csv")) as tmp:
                table.to_csv(tmp, index=False)
            result.save(run_dir.file("model.safetensors"), overwrite=True)
            run_dir.mark_finished(dense_metric=dense_metric, metric=result.metric, max_abs_error=max_err,
                                  totals=result.totals, warnings=result.warnings, **tuned,
                                  **({"sensitivity": result.sensitivity} if result.sensitivity else {}))

        distributed.on_main(write)  # every rank returns once rank 0 has written the run directory
    return result


def input_record(example_input: Any) -> dict[str, Any] | None:
    """Shape and dtype of a one-tensor example input (``lcpress export`` rebuilds it); None otherwise."""
    if not isinstance(example_input, torch.Tensor):
        return None
    return {"shape": list(example_input.shape), "dtype": str(example_input.dtype).removeprefix("torch.")}


def _finetune_fn(train_fn, loaders, config: LCConfig, device, progress) -> TrainFn | None:
    """What trains the realized model: the user's train_fn, or a fresh built-in trainer (new parameters, new optimizer)."""
    if config.finetune.steps == 0:
        return None
    if train_fn is not None:
        if config.finetune.lr is not None:
            raise ConfigError("finetune.lr sets the built-in trainer's learning rate; your train_fn sets its own (it "
                              "gets LStep.index, counting on from the LC steps): leave finetune.lr out")
        return train_fn
    if loaders is None or loaders[0] is None:
        raise ConfigError("finetune.steps > 0 needs a training function: pass train_fn=…, or loaders=(train, eval)")
    return SupervisedTrainer(loaders[0], finetune_train(config), device=device, progress=progress,
                             description="fine-tuning the realized model, pass")


def finetune_train(config: LCConfig) -> TrainConfig:
    """The built-in trainer's settings for fine-tuning: ``train``, with ``finetune.lr`` at the first pass if set.

    Fine-tuning pass k is trainer step ``schedule.steps + k`` (so ``first_epochs`` never applies to it), and the
    trainer's rate at step i is ``lr · lr_decay^i``: the base rate is scaled so that pass k gets
    ``finetune.lr · lr_decay^k``.
    """
    if config.finetune.lr is None:
        return config.train
    return dataclasses.replace(config.train, lr=config.finetune.lr / config.train.lr_decay ** config.schedule.steps)


def _fine_tune(model: nn.Module, finetune_fn, eval_fn, config: LCConfig, normalize=None,
               progress: bool = True) -> float | None:
    """``finetune.steps`` penalty-free passes over the realized model; its metric after them (None: no fine-tuning)."""
    if finetune_fn is None:
        return None
    fixed = [name for name, m in model.named_modules() if isinstance(m, DecodedLayer)]
    if fixed:
        log.warning("fine-tuning trains the realized model's parameters: %d layer(s) stored quantized or sparse "
                    "(%s) keep their stored values and train their bias only", len(fixed), listed([repr(n) for n in fixed]))
    finetune_fn = distributed.data_parallel(finetune_fn, model)  # over the realized model's parameters
    done, total = config.schedule.steps, config.schedule.steps + config.finetune.steps
    zero = next(model.parameters()).new_zeros(())
    model.train()
    for k in range(config.finetune.steps):  # the learning rate keeps decaying from the last L step
        loss = finetune_fn(model, lambda: zero, LStep(done + k, 0.0, total))
        said = "" if loss is None else f": training loss {float(loss):.4g}"
        status_line(f"fine-tuning the realized model, pass {k + 1}/{config.finetune.steps}{said}", enabled=progress)
    model.eval()
    if normalize is not None:
        normalize(model)
    return None if eval_fn is None else evaluated(model, eval_fn)


#: A compressed metric this far below dense (in the metric's own units: accuracy, cosine) is reported.
METRIC_DROP_WARNING = 0.05


def run_warnings(config: LCConfig, history: list[dict[str, Any]], dense: float | None,
                 compressed: float | None, metric_name: str = "metric") -> list[str]:
    """What a finished run should tell its user to change: an unconverged LC path, a large loss of accuracy."""
    found = []
    problem = convergence_problem(config.schedule, history)
    if problem:
        found.append(problem)
    if compressed is not None and not math.isfinite(compressed):
        found.append(f"the compressed model's {metric_name} is {compressed}: evaluate the returned model yourself, "
                     f"and check the evaluation for a division by zero or an empty loader")
    elif dense is not None and compressed is not None and dense - compressed > METRIC_DROP_WARNING:
        found.append(f"the compressed model's {metric_name} is {compressed:.4f}, {dense - compressed:.4f} below "
                     f"the dense model's {dense:.4f}: give the compression a larger budget (target ratio), more LC "
                     f"steps or L-step epochs, or fine-tune the realized model (finetune.steps)")
    return found


def _refuse_one_shot(loaders: tuple[Any, Any] | None, calibration: Any) -> None:
    """Data read more than once (every L step, every evaluation, every BatchNorm re-estimation) cannot be a
    generator: the first reader would use it up and every later one see nothing, silently."""
    named = [(f"loaders[{i}]", loader) for i, loader in enumerate(loaders or ())] + [("calibration", calibration)]
    for name, data in named:
        if isinstance(data, Iterator):
            raise ConfigError(f"{name}: a {type(data).__name__} can be read only once, and lcpress reads its data at "
                              f"every LC step; pass a DataLoader or a list of batches (list(...) of it)")
    if isinstance(calibration, (list, tuple)) and not calibration:
        raise ConfigError("calibration: the list of batches is empty")


def _refuse_unpaired(loaders: tuple[Any, Any] | None) -> None:
    """``loaders=`` batches are ``(inputs, targets)`` pairs; anything else fails here, not deep inside a forward pass.

    A dict holding inputs and labels together (a Hugging Face dataset's
    batches) would otherwise reach the model as keyword arguments, label
    included, and fail with the model's own complaint about an unexpected
    argument. Only loaders that can be read without changing them are looked
    at: DataLoaders with a batch size (through a sequential twin) and lists
    of batches.
    """
    if loaders is None:
        return
    if not isinstance(loaders, (tuple, list)) or len(loaders) != 2:
        raise ConfigError("loaders: pass a pair (train_loader, eval_loader); either may be None")
    for which, loader in zip(("train", "eval"), loaders):
        if not (isinstance(loader, (list, tuple)) or (isinstance(loader, DataLoader) and loader.batch_size)):
            continue  # other loaders may change as they are read (a batch sampler's epoch): the trainer reads them
        batch = next(iter(fixed_batches(loader)), None)  # never draws from a shuffled loader's generator
        if batch is None:
            raise ConfigError(f"loaders: the {which} loader yields no batches")
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            shown = f"a dict with keys {list(batch)}" if isinstance(batch, dict) else \
                f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            raise ConfigError(
                f"loaders: the {which} loader yields {shown}; loaders= reads (inputs, targets) pairs, the inputs a "
                f"tensor, a tuple of arguments or a dict of keyword arguments. Yield pairs (e.g. a collate_fn that "
                f"returns (inputs, labels)), or pass your own train_fn= and eval_fn= with example_input=")


def example_batch(example_input: Any, loaders: tuple[Any, Any] | None, device: torch.device,
                  calibration: Any = None) -> Any:
    """The input the model is traced on: ``example_input``, else one sample of the first batch of the eval (else
    train) loader, else of the calibration batches."""
    if example_input is None:
        sources = [s for s in (*(reversed(loaders) if loaders else ()), calibration) if s is not None]
        if not sources:
            raise ConfigError("give example_input= (one input batch), loaders= or calibration= so lcpress can trace "
                              "layer shapes")
        batch = next(iter(fixed_batches(sources[0])))  # never draws from a shuffled loader's generator
        example_input = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(example_input, torch.Tensor):
            example_input = example_input[:1]  # costs are per sample unless an example batch is given
        elif isinstance(example_input, Mapping):  # tokenized text: one sample of every tensor
            example_input = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in example_input.items()}
    return to_device(example_input, device)


def _default_fns(train_fn, eval_fn, loaders, config: LCConfig, device, progress) -> tuple[TrainFn | None, EvalFn | None]:
    if train_fn is None and config.schedule.steps > 0:
        if loaders is None or loaders[0] is None:
            raise ConfigError(
                "schedule.steps > 0 needs an L step: pass train_fn=…, or loaders=(train, eval) for the built-in "
                "trainer; or set schedule.steps: 0 for direct compression only"
            )
        train_fn = SupervisedTrainer(loaders[0], config.train, device=device, progress=progress)
    if eval_fn is None and loaders is not None and loaders[1] is not None:
        eval_loader, measure = loaders[1], METRICS[config.metric]

        def eval_fn(model: nn.Module) -> float:
            return measure(model, eval_loader, device)

        eval_fn.metric_name = config.metric  # type: ignore[attr-defined]  # a user's eval_fn is just "metric"
    return train_fn, eval_fn

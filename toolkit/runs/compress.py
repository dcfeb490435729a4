"""``lcpress.compress``: the whole pipeline in one call.

config → trace → tasks → LC engine (DC, L/C steps, checkpoints) → realize →
verify → report → save. Like ``torchao.quantize_``, the model is changed in
place: on return its compressed layers are realized modules. The CLI is a thin
shell over this function.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from lcpress.config import LCConfig
from lcpress.core.engine import CalibrateFn, EvalFn, LCEngine, LStep, TrainFn
from lcpress.core.graph import ModelGraph
from lcpress.core.plan import Plan, Task, load_config, plan
from lcpress.core.realize import RealizedLayer, load_compressed, realize, verify
from lcpress.core.scheme import State
from lcpress.errors import ConfigError, LcpressError
from lcpress.io.checkpoint import FileCheckpointer
from lcpress.io.modelfile import save
from lcpress.io.rundir import RunDirectory
from lcpress.reporting.runinfo import plan_record
from lcpress.reporting.tables import format_table, layer_table, totals
from lcpress.runs import distributed
from lcpress.runs.training import METRICS, SupervisedTrainer, forward, to_device

log = logging.getLogger("lcpress")



@dataclass
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

    def summary(self, metric_name: str = "metric") -> str:
        """The per-layer table, totals and metrics, as text."""
        lines = [format_table(self.layers)]
        if self.dense_metric is not None and self.metric is not None:
            tuned = "" if self.metric_before_finetune is None else \
                f" (after LC {self.metric_before_finetune:.4f}, then fine-tuned)"
            lines.append(f"{metric_name}: dense {self.dense_metric:.4f} → compressed {self.metric:.4f}{tuned}")
        lines.append(f"realized model vs Δ(θ): max |difference| = {self.max_abs_error:.2e}")
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
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    calibration: Iterable | None = None,
) -> CompressionResult:
    """Compress ``model`` in place with the LC algorithm and return the result.

    :param model: a trained model; its compressed layers are replaced in place.
    :param config: an :class:`LCConfig`, a dict of the YAML structure, or a YAML path.
    :param train_fn: ``train_fn(model, penalty, step)`` runs one L step: the user's
        training loop with ``penalty()`` added to the loss. Default: the built-in
        supervised trainer over ``loaders[0]`` (config ``train`` section).
    :param eval_fn: ``eval_fn(model) -> float``, e.g. test accuracy; run on the
        compressed weights after every step. Default: the config's ``metric``
        (top-1 accuracy, or cosine similarity to targets) on ``loaders[1]``.
    :param loaders: ``(train_loader, eval_loader)`` for the defaults above.
    :param example_input: one input batch, traced to learn layer shapes.
        Default: the first batch of the eval (else train) loader.
    :param resume: continue the run in ``config.output_dir`` from its checkpoint.
    :param force: replace whatever run ``config.output_dir`` holds.
    :param calibration: training batches (inputs, or ``(inputs, targets)``) run forward before the direct
        compression when a scheme measures error on layer outputs (``low_rank`` with ``error: output``);
        default: the first ``calibration_batches`` batches of ``loaders[0]``. Never the evaluation data.

    Inside an initialised ``torch.distributed`` process group (torchrun) the L
    steps run data-parallel, the C step on rank 0, and only rank 0 writes the
    run directory: see :mod:`lcpress.distributed`.
    """
    config = load_config(config)
    device = distributed.local_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use device: cpu")
    model.to(device)
    example_input = example_batch(example_input, loaders, device)
    if distributed.active() and train_fn is None and loaders is not None:
        loaders = (distributed.shard_loader(loaders[0], config.seed), loaders[1])
    progress = progress and distributed.is_main()
    finetune_fn = _finetune_fn(train_fn, loaders, config, device, progress)
    train_fn, eval_fn = _default_fns(train_fn, eval_fn, loaders, config, device, progress)
    train_fn = distributed.data_parallel(train_fn, model)

    planned = plan(model, config, example_input)
    graph, tasks, cost_models = planned.graph, planned.tasks, planned.cost_models

    run_dir = RunDirectory(config.output_dir) if config.output_dir else None
    resuming = distributed.on_main(
        lambda: run_dir.prepare(resume=resume, force=force, config=config.to_dict()) if run_dir else False)
    if resume and run_dir is None:
        raise ConfigError("output_dir: resuming needs the run directory of the run to continue")
    checkpointer = FileCheckpointer(run_dir.checkpoint_path, config.to_dict()) if run_dir and config.checkpoint else None

    torch.manual_seed(config.seed)
    dense_metric = float(eval_fn(model)) if eval_fn is not None else None
    if run_dir is not None and distributed.is_main():  # what `lcpress report` needs while the run is running
        run_dir.update_info(plan=plan_record(graph, tasks), dense_metric=dense_metric,
                            example_input=input_record(example_input))
    engine_class = distributed.DistributedLCEngine if distributed.active() else LCEngine
    engine = engine_class(model, tasks, config.schedule, train_fn, eval_fn, graph=graph, cost_models=cost_models,
                          seed=config.seed, checkpointer=checkpointer, progress=progress,
                          history_csv=run_dir.file("history.csv") if run_dir else None,
                          calibrate=_calibrate_fn(calibration, loaders, config, device))
    if resuming:
        tensors, meta = FileCheckpointer(run_dir.checkpoint_path, {}).load()
        engine.restore(tensors, meta["engine"])
        log.info("resuming %s after LC step %d", run_dir.path, engine.next_step - 1)
    engine.run()
    return _finish(model, engine, graph, cost_models, config, example_input, dense_metric, run_dir, finetune_fn, eval_fn)


def _finish(model, engine: LCEngine, graph, cost_models, config, example_input, dense_metric, run_dir,
            finetune_fn=None, eval_fn=None) -> CompressionResult:
    states = list(engine.states)
    load_compressed(engine.tasks, states)  # the model now computes with Δ(θ) …
    reference = copy.deepcopy(model)  # … and this dense copy is what the realized model must match
    records = realize(model, engine.tasks, states, graph.aliases)
    max_err = verify(model, reference, example_input)  # before fine-tuning moves the realized weights
    tuned_metric = _fine_tune(model, finetune_fn, eval_fn, config)
    model.lcpress_layers = [r.to_dict() for r in records]
    schemes = {name: t.scheme.name for t in engine.tasks for name in t.layers}
    table = layer_table(graph, engine.forms(), cost_models, schemes, [r.name for r in records if r.realized])
    history = engine.history_frame()
    metric = history["metric"].iloc[-1] if "metric" in history else None
    metric = None if metric is None else float(metric)
    result = CompressionResult(model, history, table, records, states, engine.tasks, graph, dense_metric,
                               metric if tuned_metric is None else tuned_metric, max_err, config, None, totals(table),
                               metric if tuned_metric is not None else None)
    if run_dir is not None:
        result.run_dir = run_dir.path
        tuned = {} if tuned_metric is None else {"metric_before_fine_tuning": metric, "fine_tuned": True,
                                                 "fine_tune_passes": config.finetune.steps}

        def write() -> None:
            table.to_csv(run_dir.file("layers.csv"), index=False)
            result.save(run_dir.file("model.safetensors"), overwrite=True)
            run_dir.mark_finished(dense_metric=dense_metric, metric=result.metric, max_abs_error=max_err,
                                  totals=result.totals, **tuned)

        distributed.on_main(write)  # every rank returns once rank 0 has written the run directory
    return result


def input_record(example_input: Any) -> dict[str, Any] | None:
    """Shape and dtype of a one-tensor example input (``lcpress export`` rebuilds it); None otherwise."""
    if not isinstance(example_input, torch.Tensor):
        return None
    return {"shape": list(example_input.shape), "dtype": str(example_input.dtype).removeprefix("torch.")}


def _calibrate_fn(calibration: Iterable | None, loaders, config: LCConfig, device) -> CalibrateFn | None:
    """Forward passes over training batches (``calibration``, else the train loader's first batches)."""
    if calibration is None:
        calibration = loaders[0] if loaders is not None else None
    if calibration is None:
        return None

    def calibrate(model: nn.Module) -> None:
        for batch in islice(calibration, config.calibration_batches):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(model, to_device(inputs, device))

    return calibrate


def _finetune_fn(train_fn, loaders, config: LCConfig, device, progress) -> TrainFn | None:
    """What trains the realized model: the user's train_fn, or a fresh built-in trainer (new parameters, new optimizer)."""
    if config.finetune.steps == 0:
        return None
    if train_fn is not None:
        return train_fn
    if loaders is None or loaders[0] is None:
        raise ConfigError("finetune.steps > 0 needs a training function: pass train_fn=…, or loaders=(train, eval)")
    return SupervisedTrainer(loaders[0], config.train, device=device, progress=progress,
                             description="fine-tuning the realized model, pass")


def _fine_tune(model: nn.Module, finetune_fn, eval_fn, config: LCConfig) -> float | None:
    """``finetune.steps`` penalty-free passes over the realized model; its metric after them (None: no fine-tuning)."""
    if finetune_fn is None:
        return None
    finetune_fn = distributed.data_parallel(finetune_fn, model)  # over the realized model's parameters
    done, total = config.schedule.steps, config.schedule.steps + config.finetune.steps
    zero = next(model.parameters()).new_zeros(())
    model.train()
    for k in range(config.finetune.steps):  # the learning rate keeps decaying from the last L step
        finetune_fn(model, lambda: zero, LStep(done + k, 0.0, total))
    model.eval()
    return None if eval_fn is None else float(eval_fn(model))


def example_batch(example_input: Any, loaders: tuple[Any, Any] | None, device: torch.device) -> Any:
    """The input the model is traced on: ``example_input``, else one sample of the eval (else train) loader's first batch."""
    if example_input is None:
        if loaders is None:
            raise ConfigError("give example_input= (one input batch) or loaders= so lcpress can trace layer shapes")
        source = loaders[1] if loaders[1] is not None else loaders[0]
        batch = next(iter(source))
        example_input = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(example_input, torch.Tensor):
            example_input = example_input[:1]  # costs are per sample unless an example batch is given
        elif isinstance(example_input, dict):  # tokenized text: one sample of every tensor
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

    return train_fn, eval_fn

"""Planning: the config resolved once into plugins, then into tasks against the model.

Two steps, both before any training:

* :func:`resolve` turns the names in a config into plugins — every task
  group's scheme class with its parsed options, every cost model the run
  uses with its parsed options — and checks what needs no model: unknown
  names, bad plugin options, a ``target`` on a scheme that has no choice to
  make, a cost model that cannot run here. Every failure is a
  :class:`ConfigError` naming the key.
* :func:`plan` traces the model and turns each task group into tasks (which
  parameters, through which view, by which scheme, priced how), failing on a
  pattern that matches no layer, a layer claimed by two groups, a layer that
  is not a Linear/Conv2d/Embedding, or a layer the scheme cannot handle.

Everything else — the engine, reports of running runs, sweeps, the CLI's
``profile`` and ``costs`` — works from a :class:`Resolved` or a :class:`Plan`
and never reads plugin names or options again.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcpress.config import LCConfig, TaskConfig, parse_config
from lcpress.core.costmodel import CostModel
from lcpress.core.forms import LayerSpec
from lcpress.core.graph import (COMPRESSIBLE, COMPRESSIBLE_TEXT, ModelGraph, is_conv1d, parent_reading_weights,
                                 realization_problem, trace)
from lcpress.core.guard import plugin_call
from lcpress.core.registry import Registry, get_registry
from lcpress.core.scheme import Scheme
from lcpress.core.surgery import replace_module, tensors_in
from lcpress.core.views import TaskView
from lcpress.errors import ConfigError, LcpressError, PluginError, listed
from lcpress.linalg.finite import all_finite
from lcpress.nn.modules import PointwiseConv2d
from lcpress.options import Options

log = logging.getLogger(__name__)

#: Analytic cost models every run prices and reports, besides those its tasks use.
REPORTED_COST_MODELS = ("params", "flops", "storage")


@dataclass(frozen=True)
class GroupPlugins:
    """One task group of the config with its scheme resolved: class and parsed options."""

    index: int
    config: TaskConfig
    scheme_class: type[Scheme]
    options: Options

    def scheme(self) -> Scheme:
        """A fresh scheme instance (one per task: schemes may keep per-layer scratch)."""
        with plugin_call(self.scheme_class, f"in __init__() for tasks[{self.index}]"):
            return self.scheme_class(self.options)


@dataclass
class Resolved:
    """A config with every plugin name resolved (see :func:`resolve`)."""

    config: LCConfig
    groups: list[GroupPlugins]
    cost_models: dict[str, CostModel]


def load_config(source: str | Path | dict[str, Any] | LCConfig) -> LCConfig:
    """Parse and fully validate a config (YAML path, dict, or LCConfig), plugins included."""
    config = parse_config(source)
    resolve(config)
    return config


def resolve(config: LCConfig, registry: Registry | None = None, *, measured: bool = True,
            notes: bool = False) -> Resolved:
    """Resolve every scheme and cost model the config names, with their options.

    :param measured: also build the cost models that measure (and require them
        to be available here); False keeps only the analytic ones, for looking
        at a run on a machine that is not the one it measures.
    :param notes: say which configured cost models this machine leaves out (once, when a run is planned; a
        config is also resolved to validate it, silently).
    """
    registry = registry or get_registry()
    cost_models = _cost_models(config, registry, measured, notes)
    groups = [_group(config.tasks[g], g, registry) for g in range(len(config.tasks))]
    return Resolved(config, groups, cost_models)


def _lookup(registry: Registry, kind: str, name: str, key: str) -> type:
    try:
        return registry.scheme(name) if kind == "scheme" else registry.cost_model(name)
    except PluginError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _group(cfg: TaskConfig, g: int, registry: Registry) -> GroupPlugins:
    where = f"tasks[{g}]"
    scheme_class = _lookup(registry, "scheme", cfg.scheme, f"{where}.scheme")
    with plugin_call(scheme_class, f"building its options for {where}.options"):
        options = scheme_class.Options.from_dict(cfg.options, f"{where}.options")
    group = GroupPlugins(g, cfg, scheme_class, options)
    scheme = group.scheme()
    with plugin_call(scheme, f"in selecting() for {where}"):
        selecting = scheme.selecting()
    if cfg.target is not None and not selecting:
        hint = scheme.choosing_hint
        raise ConfigError(
            f"{where}.target: with these options scheme {cfg.scheme!r} does not choose a form, so a budget cannot "
            f"steer it; " + (f"to let it choose, {hint} in {where}.options, or drop the target" if hint else
                             "it never chooses (its parts' forms are fixed): drop the target")
        )
    return group


def cost_model_names(config: LCConfig) -> list[str]:
    """Every cost model a run prices with: the reported ones, the tasks' and targets', and the configured ones."""
    names = list(REPORTED_COST_MODELS)
    for task in config.tasks:
        names.append(task.cost)
        if task.target is not None:
            names.append(task.target.cost)
    return list(dict.fromkeys(names + list(config.cost_models)))


def _cost_models(config: LCConfig, registry: Registry, measured: bool, notes: bool = False) -> dict[str, CostModel]:
    from lcpress.core.measured import MeasuredCostModel

    used = _priced_by_tasks(config)
    models: dict[str, CostModel] = {}
    for name in cost_model_names(config):
        key = f"cost_models.{name}" if name in config.cost_models else _cost_key(config, name)
        cls = _lookup(registry, "cost model", name, key)
        if not measured and issubclass(cls, MeasuredCostModel):
            continue
        with plugin_call(cls, f"building its options and an instance for {key}"):
            model = cls(cls.Options.from_dict(config.cost_models.get(name, {}), f"cost_models.{name}"))
        with plugin_call(model, "in unavailable_reason()"):
            reason = model.unavailable_reason()
        if reason and name in used:
            raise ConfigError(f"{_cost_key(config, name)}: cost model {name!r} is not available here: {reason}")
        if reason and notes and name in config.cost_models:  # configured but unused here: the run goes on
            log.warning("cost_models.%s: not available here (%s); no task uses it, so the run's tables leave it "
                        "out", name, reason)
        if not reason:
            models[name] = model
    return models


def _priced_by_tasks(config: LCConfig) -> set[str]:
    """The cost models the task groups price with: each one's ``cost`` and its target's."""
    return {t.cost for t in config.tasks} | {t.target.cost for t in config.tasks if t.target is not None}


def _cost_key(config: LCConfig, name: str) -> str:
    """The config key that names cost model ``name`` (for messages)."""
    for g, task in enumerate(config.tasks):
        if task.cost == name:
            return f"tasks[{g}].cost"
        if task.target is not None and task.target.cost == name:
            return f"tasks[{g}].target.cost"
    return f"cost_models.{name}"


@dataclass
class Task:
    """One C-step problem: parameters → one tensor → one scheme."""

    name: str
    layers: list[str]
    params: list[nn.Parameter]
    view: TaskView
    scheme: Scheme
    cost_model: CostModel
    spec: LayerSpec | None
    group: int
    config: TaskConfig
    #: the specs of the layers a model-scope task prices (its layers in their traced shapes, and the
    #: :attr:`Binding.sites` that change with it)
    layer_specs: dict[str, LayerSpec] = field(default_factory=dict)

    def weight(self) -> torch.Tensor:
        """The tensor the scheme compresses (differentiable through the view)."""
        return self.view.gather(self.params)

    @property
    def single_layer(self) -> bool:
        return self.view.kind == "identity"


@dataclass
class Plan:
    """A run planned against its model: the traced graph, the tasks, and the cost models."""

    graph: ModelGraph
    tasks: list[Task]
    cost_models: dict[str, CostModel]
    resolved: Resolved


def plan(model: nn.Module, config: LCConfig, example_input: Any, resolved: Resolved | None = None) -> Plan:
    """Trace ``model`` on ``example_input`` and turn the config's task groups into tasks (no training).

    The one change it makes to ``model``: realized 1×1 stages that a task's patterns reach become the
    ``nn.Conv2d`` they compute (:func:`pointwise_as_conv`), the same function with the same state dict.
    """
    resolved = resolved or resolve(config, notes=True)
    refuse_broken_weights(model)
    pointwise_as_conv(model, config)
    graph = trace(model, example_input)
    for cost_model in resolved.cost_models.values():
        with plugin_call(cost_model, "in for_layers() while planning the run"):
            cost_model.for_layers(graph.specs)
    _warn_batch_elsewhere(graph, resolved.cost_models, example_input)
    _warn_other_precision(model, config, resolved.cost_models)
    return Plan(graph, plan_tasks(model, graph, resolved, example_input), resolved.cost_models, resolved)


def _warn_batch_elsewhere(graph: ModelGraph, cost_models: dict[str, CostModel], example_input: Any) -> None:
    """A cost model's ``batch_size`` replaces the first dimension of each layer's input; say so where that
    dimension is not the example's batch (tokens flattened into it, a sequence-first model)."""
    sized = [name for name, m in cost_models.items()
             if getattr(m.options, "batch_size", None) is not None or getattr(m.options, "batch_sizes", None)]
    batch = _batch_of(example_input)
    if not sized or batch is None:
        return
    elsewhere = [n for n, spec in graph.specs.items() if spec.input_shape and spec.input_shape[0] != batch]
    if elsewhere:
        log.warning("cost_models.%s's batch size replaces the first dimension of each layer's input, but %s take "
                    "inputs whose first dimension is not the example's batch of %d (tokens flattened into it, or "
                    "a sequence-first model), so they would be timed at another size: pass example_input= a batch "
                    "of the deployment size and leave batch_size (batch_sizes) out", sized[0], listed(elsewhere), batch)


def _warn_other_precision(model: nn.Module, config: LCConfig, cost_models: dict[str, CostModel]) -> None:
    """A cost model priced at ``dtype_bits`` per stored number, over a model that stores another width: its
    figures (and a target stated in it) would not describe the saved file."""
    widths = {p.dtype.itemsize * 8 for p in model.parameters() if p.is_floating_point()}
    if len(widths) != 1:
        return
    held, used = widths.pop(), _priced_by_tasks(config)
    for name, cost_model in cost_models.items():
        bits = getattr(cost_model.options, "dtype_bits", None)
        if bits and bits != held and (name in used or name in config.cost_models):
            convert = "model.half()" if bits == 16 else "model.float()" if bits == 32 else "model.double()"
            log.warning("cost_models.%s.dtype_bits: %d prices each stored number at %d bits, but the model holds "
                        "%d-bit numbers, which the saved file stores: set dtype_bits: %d, or convert the model "
                        "(%s) before compressing", name, bits, bits, held, held, convert)


def _batch_of(example_input: Any) -> int | None:
    """The batch size of an example input: the first dimension of its first tensor."""
    return next((int(t.shape[0]) for t in tensors_in(example_input) if t.dim()), None)


def refuse_unloaded(model: nn.Module) -> None:
    """Weights on the ``meta`` device (a model built but never loaded), named before anything moves or reads them."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            raise LcpressError(f"{name!r} is not initialized yet (a lazy layer, nn.LazyLinear or nn.LazyConv2d, "
                               f"takes its shape from its first input): run the model once on an input, and load "
                               f"the trained weights, before compressing")
        if tensor.is_meta:
            raise LcpressError(f"{name!r} is on the meta device: the model's weights are not loaded; load the trained "
                               f"weights (or call model.to_empty() and load them) before compressing")


def refuse_broken_weights(model: nn.Module) -> None:
    """Weights that are not loaded (``meta``) or not finite, named before anything is traced or trained.

    Every parameter is checked, not only the compressed ones: a NaN bias elsewhere would surface as a NaN
    training loss, blamed on the learning rate.
    """
    refuse_unloaded(model)
    for name, param in model.named_parameters():
        if not all_finite(param.detach()):
            raise LcpressError(f"parameter {name!r} holds NaN or infinite values before compression — the model (or "
                               f"the weights file it was loaded from) is broken; compress a model with finite weights")


def pointwise_as_conv(model: nn.Module, config: LCConfig) -> None:
    """Realized 1×1 stages a task reaches become the ``nn.Conv2d`` they compute (exactly), so they compress again.

    A model compressed once holds :class:`PointwiseConv2d` layers (the second half of a low-rank conv); a
    second compression of it (quantize the thin layers) reaches them as the plain convolutions they are.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, PointwiseConv2d) and any(reaches(task, name) for task in config.tasks):
            replace_module(model, name, module.to_conv())


def plan_tasks(model: nn.Module, graph: ModelGraph, resolved: Resolved, example_input: Any = None) -> list[Task]:
    """Resolve every task group against ``model`` (see the module docstring)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    tied = _tied_weights(model)
    claimed: dict[str, int] = {}
    tasks: list[Task] = []
    for group in resolved.groups:
        g, cfg = group.index, group.config
        names, named = _match(cfg, modules, graph, g)
        if group.scheme_class.scope != "model":
            fitting = _fitting_layers(group, names, named, graph, modules, resolved.config.schedule.steps > 0)
            names = _untied_layers(g, fitting, named, tied)
        for name in names:
            if name in claimed:
                raise ConfigError(
                    f"tasks[{g}].layers: layer {name!r} is already compressed by tasks[{claimed[name]}]; "
                    f"a layer belongs to one task group (combine schemes with the 'additive' scheme)"
                )
            claimed[name] = g
        cost_model = resolved.cost_models[cfg.cost]
        if group.scheme_class.scope == "model":
            tasks.append(_bound_task(model, graph, group, names, cost_model, example_input))
            continue
        if cfg.shared and len(names) > 1:
            scheme = group.scheme()
            with plugin_call(scheme, f"in check_shared() (tasks[{g}])"):
                problem = scheme.check_shared()
            if problem:
                raise ConfigError(f"tasks[{g}].shared: {problem}; drop shared: true (each layer compressed on "
                                  f"its own), or choose a scheme that takes a joined vector (quantize, prune)")
        units = [names] if cfg.shared else [[n] for n in names]
        for unit in units:
            scheme = group.scheme()
            spec = graph.specs.get(unit[0]) if len(unit) == 1 else None
            params = [modules[n].weight for n in unit]
            view = TaskView("identity" if len(unit) == 1 else "flatten", tuple(tuple(p.shape) for p in params))
            task_name = unit[0] if len(unit) == 1 else f"group{g}"
            tasks.append(Task(task_name, unit, params, view, scheme, cost_model, spec, g, cfg))
    _refuse_overlap(tasks)
    for task in tasks:  # a model-scope task's binding reaches beyond the matched layers _untied_layers saw
        if task.scheme.scope == "model":
            _refuse_tied(task.group, [n for n in task.layers if n in tied], tied)
    return tasks


def _fitting_layers(group: GroupPlugins, names: list[str], named: set[str], graph: ModelGraph,
                    modules: dict[str, nn.Module], trains: bool) -> list[str]:
    """The matched layers the group's scheme can compress; a layer it cannot is an error only if named exactly.

    A glob (``"*"`` over a MobileNet) reaches layers of every kind, depthwise convolutions among them; those
    the scheme cannot handle are left alone with a warning, as a pattern's non-compressible modules are. So
    are frozen layers (a fine-tuned model's embedding tables) when the run ``trains``: L steps could not move
    them; named exactly, compress refuses them before training, saying how to unfreeze them.
    """
    scheme, g = group.scheme(), group.index
    kept, unfit = [], []
    for name in names:
        with plugin_call(scheme, f"in check_layer() on layer {name!r} (tasks[{g}])"):
            problem = _layer_problem(modules[name]) or scheme.refuses(graph.specs.get(name), modules[name])
        reader = None if problem else parent_reading_weights(modules[""], name)
        if reader:  # known now: L steps would train it, and realization would keep it a dense layer
            problem = (f"its parent {reader} reads its weight inside its own forward (a fused fast path), so no "
                       f"compressed form of it can run there")
        weight = getattr(modules[name], "weight", None)
        if not problem and trains and name not in named and isinstance(weight, nn.Parameter) and not weight.requires_grad:
            problem = "its weight is frozen (requires_grad=False), and LC's L steps train the weights they compress"
        if problem and name in named:
            raise ConfigError(f"tasks[{g}]: layer {name!r}: {problem}")
        if problem:
            unfit.append(f"{name!r} ({problem})")
        else:
            kept.append(name)
    if unfit and not kept:
        raise ConfigError(f"tasks[{g}]: {group.config.scheme} can compress none of the layers matched: "
                          f"{listed(unfit)}")
    if unfit:
        log.warning("tasks[%d]: %d matched layer(s) left alone, which %s cannot compress: %s; exclude them to "
                    "silence this", g, len(unfit), group.config.scheme, listed(unfit))
    return kept


#: What torch.compile's and DataParallel's wrappers put before every name; lcpress names layers inside them.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _layer_problem(module: nn.Module) -> str | None:
    """Why lcpress cannot compress a layer of a kind it compresses, whatever the scheme; None: it can."""
    problem = realization_problem(module)
    if problem:
        return problem
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return ("an embedding with max_norm rescales its table's rows in place at every lookup; leave it out, or "
                "renormalize the table once and set max_norm=None before compressing")
    if isinstance(module, nn.Embedding) and module.sparse:
        return "an embedding with sparse=True has sparse gradients, and the LC penalty's gradient is dense"
    return None


def _tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """Layers whose weight another module also holds (tied weights), each with the other holders' names.

    A module registered under two names is one layer, not a tie: the graph's aliases already make it one task.
    """
    holders: dict[int, list[tuple[int, str]]] = {}  # parameter → (module, qualified name) of each holder
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen:
            continue
        seen.add(id(module))
        for pname, param in module.named_parameters(recurse=False):
            holders.setdefault(id(param), []).append((id(module), f"{name}.{pname}" if name else pname))
    tied: dict[str, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        others = [o for m, o in holders.get(id(weight), []) if m != id(module)]
        if isinstance(weight, nn.Parameter) and others:
            tied[name] = others
    return tied


def _untied_layers(g: int, names: list[str], named: set[str], tied: dict[str, list[str]]) -> list[str]:
    """The matched layers whose weight no other module holds; a tied one is an error only if named exactly.

    Compressing one holder of a tied weight replaces it by thin layers, and the other would go on reading a
    tensor that is neither the trained weight nor its compressed form (a language model's output layer tied
    to its embedding is the usual case). ``"*"`` over such a model compresses the rest and says so.
    """
    left = [n for n in names if n in tied]
    _refuse_tied(g, left if len(left) == len(names) else [n for n in left if n in named], tied)
    if left:
        log.warning("tasks[%d]: %s left alone: %s; untie a layer to compress it: layer = "
                    "model.get_submodule(%r); layer.weight = nn.Parameter(layer.weight.detach().clone())", g,
                    "a layer whose weight another module also holds is" if len(left) == 1 else
                    "layers whose weight another module also holds are",
                    listed([f"{n!r} (tied to {', '.join(tied[n])})" for n in left]), left[0])
    return [n for n in names if n not in tied]


def _refuse_tied(g: int, layers: list[str], tied: dict[str, list[str]]) -> None:
    """Tied layers a task cannot leave out (named exactly, or all it has) fail before training."""
    if layers:
        layer = layers[0]
        raise ConfigError(
            f"tasks[{g}]: layer {layer!r} shares its weight with {', '.join(tied[layer])} (tied "
            f"parameters); compressing it would change what the other holder computes. Leave {layer!r} "
            f"out (exclude), or untie them first: layer = model.get_submodule({layer!r}); "
            f"layer.weight = nn.Parameter(layer.weight.detach().clone())")


def _refuse_overlap(tasks: list[Task]) -> None:
    """A model-scope task reaches beyond its matched layers (consumers): none may belong to another task."""
    owner: dict[str, Task] = {}
    for task in tasks:
        for name in task.layers:
            other = owner.setdefault(name, task)
            if other is not task:
                raise ConfigError(
                    f"tasks[{task.group}]: layer {name!r} is also changed by tasks[{other.group}] "
                    f"({other.config.scheme}); a pruned channel group shrinks the layers that read it, so leave "
                    f"{name!r} out of one of them (exclude, or the channels scheme's 'ignore')")


def _bound_task(model: nn.Module, graph: ModelGraph, group: GroupPlugins, names: list[str], cost_model: CostModel,
                example_input: Any) -> Task:
    """The one task of a model-scope scheme: parameters and priced layers as its :meth:`Scheme.bind` chooses."""
    if example_input is None:
        raise ConfigError(f"tasks[{group.index}]: scheme {group.config.scheme!r} analyses the model's graph and "
                          f"needs the example input; plan with plan(model, config, example_input)")
    scheme = group.scheme()
    with plugin_call(scheme, f"in bind() for tasks[{group.index}]"):
        binding = scheme.bind(model, names, example_input)
    missing = [n for n in binding.layers if n not in graph.specs]
    if missing:
        raise ConfigError(
            f"tasks[{group.index}]: the scheme reaches layers {missing} through the model's graph, but the forward "
            f"pass on the example input never calls them as modules (a weight used through F.linear or F.conv2d, "
            f"say), so they cannot be priced; call the module (layer(x)) instead, or exclude them")
    view = TaskView("flatten", tuple(tuple(p.shape) for p in binding.params))
    return Task(f"group{group.index}", list(binding.layers), list(binding.params), view, scheme, cost_model, None,
                group.index, group.config, {**{n: graph.specs[n] for n in binding.layers}, **binding.sites})


def _what_there_is(modules: dict[str, nn.Module], graph: ModelGraph) -> str:
    """The compressible layers a pattern could name, or why the model has none."""
    if graph.order:
        return f"compressible layers: {listed(graph.order, 12)}"
    stored = sorted({type(m).__name__ for m in modules.values() if type(m).__name__.startswith("Decoded")})
    if stored:
        return (f"it has no {COMPRESSIBLE_TEXT} layer left: its layers are stored compressed already "
                f"({', '.join(stored)}); compress the original model instead (the 'sequential' scheme prunes, "
                f"then quantizes the survivors, in one run)")
    if any(isinstance(m, torch.jit.ScriptModule) for m in modules.values()):
        return (f"it has no {COMPRESSIBLE_TEXT} layer the forward pass calls as a plain module: its layers are "
                f"TorchScript (torch.jit.script), which lcpress cannot change; compress the plain model, then script it")
    return f"it has no {COMPRESSIBLE_TEXT} layer the forward pass on the example input calls"


def _realized_layers(modules: dict[str, nn.Module]) -> set[str]:
    """Names of the layers an lcpress run realized in this model (its records, on the root module)."""
    records = getattr(modules.get(""), "lcpress_layers", None) or []
    return {r.get("name") for r in records if isinstance(r, dict) and r.get("realized")}


def excluded(cfg: TaskConfig, name: str) -> bool:
    """Whether one of the task group's ``exclude`` patterns removes layer ``name``."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in cfg.exclude)


def reaches(cfg: TaskConfig, name: str, pattern: str | None = None) -> bool:
    """Whether the group's layer patterns (or only ``pattern``) match module ``name`` and no exclude removes it."""
    patterns = cfg.layers if pattern is None else [pattern]
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns) and not excluded(cfg, name)


def _match(cfg: TaskConfig, modules: dict[str, nn.Module], graph: ModelGraph, g: int) -> tuple[list[str], set[str]]:
    canonical = {alias: primary for primary, others in graph.aliases.items() for alias in others}
    names: list[str] = []
    named: set[str] = set()  # layers a pattern names exactly, not through a glob
    left_alone: list[str] = []
    for i, pattern in enumerate(cfg.layers):
        explicit = pattern in modules
        if explicit:
            hits = [pattern]
        else:
            hits = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern) and isinstance(modules[n], COMPRESSIBLE)]
        _refuse_conv1d(cfg, modules, pattern, g, i)
        if not explicit:
            _warn_other_weights(cfg, modules, pattern, g, i)
        if not hits:
            wrapper = next((w for w in WRAPPER_PREFIXES if pattern.startswith(w)
                            and any(fnmatch.fnmatchcase(n, pattern[len(w):]) for n in modules if n)), None)
            hint = (f"; layer names are the wrapped module's own: drop the {wrapper!r} prefix" if wrapper else "")
            raise ConfigError(f"tasks[{g}].layers[{i}]: {pattern!r} matches no layer of the model{hint}; "
                              + _what_there_is(modules, graph))
        uncalled: list[str] = []
        for name in dict.fromkeys(canonical.get(h, h) for h in hits):
            if excluded(cfg, name):
                continue
            module = modules[name]
            if not isinstance(module, COMPRESSIBLE):
                inside = any(isinstance(m, COMPRESSIBLE) for m in module.modules())
                if explicit and name in _realized_layers(modules):
                    raise ConfigError(
                        f"tasks[{g}].layers[{i}]: {name!r} was realized by an lcpress run (it is a "
                        f"{type(module).__name__} now). To resume a run that stopped after realizing it, pass the "
                        f"dense model the run started from (a fresh copy); "
                        + (f"to compress it further, name the layers inside it, e.g. '{name}.*'" if inside else
                           "it is stored compressed, with no layer inside to compress again: compress the original "
                           "model instead"))
                if isinstance(module, torch.jit.ScriptModule):
                    raise ConfigError(f"tasks[{g}].layers[{i}]: {name!r} is a TorchScript module (torch.jit.script), "
                                      f"whose layers lcpress cannot replace; compress the plain model, then script it")
                raise ConfigError(
                    f"tasks[{g}].layers[{i}]: {name!r} is a {type(module).__name__}; lcpress compresses "
                    f"{COMPRESSIBLE_TEXT} layers"
                    + (f" (name the layers inside it, e.g. '{name}.*')" if inside else ", and it holds none")
                )
            if name not in graph.specs:
                if explicit:
                    raise ConfigError(f"tasks[{g}].layers[{i}]: layer {name!r} is not called by the forward pass "
                                      f"on the example input{_why_uncalled(modules, name)}")
                uncalled.append(name)
            else:
                if name not in names:
                    names.append(name)
                if explicit:
                    named.add(name)
        if uncalled:  # a glob reaches every layer of that type; one the forward never calls is not compressible
            log.warning("tasks[%d].layers[%d]: %r also matches %s, which the forward pass on the example input does "
                        "not call%s; left alone (exclude them to silence this)", g, i, pattern,
                        ", ".join(repr(n) for n in uncalled), _why_uncalled(modules, uncalled[0]))
            left_alone += uncalled
    if not names:
        raise ConfigError(f"tasks[{g}].layers: no layer it matches is called by the forward pass on the example "
                          f"input{_why_uncalled(modules, left_alone[0])}" if left_alone else
                          f"tasks[{g}].exclude: every layer matched by 'layers' is excluded")
    return names, named


def _warn_other_weights(cfg: TaskConfig, modules: dict[str, nn.Module], pattern: str, g: int, i: int) -> None:
    """Say which weight layers a glob reaches but lcpress does not compress (Conv1d, Embedding, LSTM …).

    Without this a ``"*"`` over a 1-D CNN compresses its Linear head and silently leaves every conv dense. A
    module counts when it holds a weight matrix itself (not through a child): an LSTM's ``weight_ih_l0``,
    attention's ``in_proj_weight``; a learned token of shape (1, 1, d) is not a matrix.
    """
    from torch.nn.utils.parametrize import ParametrizationList  # holds a parametrized layer's own weight

    found: dict[str, int] = {}
    for name, module in modules.items():
        if (name and not isinstance(module, (*COMPRESSIBLE, ParametrizationList)) and not is_conv1d(module)
                and _holds_a_matrix(module) and reaches(cfg, name, pattern)):
            found[type(module).__name__] = found.get(type(module).__name__, 0) + 1
    if found:
        kinds = ", ".join(f"{count} {kind}" for kind, count in found.items())
        log.warning("tasks[%d].layers[%d]: %r also reaches %s, which lcpress does not compress (it compresses %s); "
                    "they stay as they are (exclude them to silence this)", g, i, pattern, kinds, COMPRESSIBLE_TEXT)


def _holds_a_matrix(module: nn.Module) -> bool:
    """Whether ``module`` itself holds a parameter with at least two dimensions of more than one entry."""
    return any(p.dim() >= 2 and sum(size > 1 for size in p.shape) >= 2 for p in module.parameters(recurse=False))


def _why_uncalled(modules: dict[str, nn.Module], name: str) -> str:
    """Why a layer the model holds may not be called: a parent that reads its weight instead (attention)."""
    parent = modules.get(name.rpartition(".")[0])
    if isinstance(parent, nn.MultiheadAttention):
        return (" (nn.MultiheadAttention reads its out_proj's weight inside its own forward, so the layer is "
                "never called and cannot be priced or replaced)")
    return " (a branch used only in training, or by another input, is not called on this one)"


def _refuse_conv1d(cfg: TaskConfig, modules: dict[str, nn.Module], pattern: str, g: int, i: int) -> None:
    """A pattern that reaches transformers Conv1D layers fails, saying how to convert them."""
    found = [n for n, m in modules.items() if n and is_conv1d(m) and reaches(cfg, n, pattern)]
    if found:
        shown = listed(found)
        raise ConfigError(
            f"tasks[{g}].layers[{i}]: {pattern!r} matches transformers Conv1D layers ({shown}), GPT-2's Linear "
            f"with a transposed weight, which lcpress does not compress directly; convert them first with "
            f"lcpress.integrations.hf.conv1d_to_linear(model) (exact), or leave them out with 'exclude'"
        )

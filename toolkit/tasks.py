"""Tasks: which parameters, through which view, by which scheme, priced how.

:func:`plan_tasks` turns the config's task groups into concrete tasks against
the real model, and fails — before any training — on a pattern that matches no
layer, a layer claimed by two groups, a layer that is not a Linear/Conv2d, or
a layer the scheme cannot handle.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .config import TaskConfig
from .costmodel import CostModel
from .errors import ConfigError
from .forms import LayerSpec
from .graph import COMPRESSIBLE, ModelGraph
from .registry import Registry
from .scheme import Scheme
from .views import TaskView


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

    def weight(self) -> torch.Tensor:
        """The tensor the scheme compresses (differentiable through the view)."""
        return self.view.gather(self.params)

    @property
    def single_layer(self) -> bool:
        return self.view.kind == "identity"


def plan_tasks(
    model: nn.Module,
    graph: ModelGraph,
    task_configs: Sequence[TaskConfig],
    registry: Registry,
    cost_models: dict[str, CostModel] | None = None,
) -> list[Task]:
    """Resolve every task group against ``model`` (see the module docstring)."""
    cost_models = {} if cost_models is None else cost_models
    modules = dict(model.named_modules(remove_duplicate=False))
    claimed: dict[str, int] = {}
    tasks: list[Task] = []
    for g, cfg in enumerate(task_configs):
        names = _match(cfg, modules, graph, g)
        for name in names:
            if name in claimed:
                raise ConfigError(
                    f"tasks[{g}].layers: layer {name!r} is already compressed by tasks[{claimed[name]}]; "
                    f"a layer belongs to one task group (combine schemes with the 'additive' scheme)"
                )
            claimed[name] = g
        scheme_cls = registry.scheme(cfg.scheme)
        options = scheme_cls.Options.from_dict(cfg.options, f"tasks[{g}].options")
        cost_model = cost_models.get(cfg.cost)
        if cost_model is None:
            cost_model = cost_models[cfg.cost] = registry.cost_model(cfg.cost)()
        if cfg.target is not None and not scheme_cls(options).selecting():
            raise ConfigError(
                f"tasks[{g}].target: with these options scheme {cfg.scheme!r} has a fixed form, so a budget cannot "
                f"steer it; drop the fixed rank / keep / k from tasks[{g}].options, or drop the target"
            )
        units = [names] if cfg.shared else [[n] for n in names]
        for unit in units:
            scheme = scheme_cls(options)
            spec = graph.specs.get(unit[0]) if len(unit) == 1 else None
            for name in unit:
                problem = scheme.check_layer(graph.specs.get(name), modules[name])
                if problem:
                    raise ConfigError(f"tasks[{g}]: layer {name!r}: {problem}")
            params = [modules[n].weight for n in unit]
            view = TaskView("identity" if len(unit) == 1 else "flatten", tuple(tuple(p.shape) for p in params))
            task_name = unit[0] if len(unit) == 1 else f"group{g}"
            tasks.append(Task(task_name, unit, params, view, scheme, cost_model, spec, g, cfg))
    return tasks


def _match(cfg: TaskConfig, modules: dict[str, nn.Module], graph: ModelGraph, g: int) -> list[str]:
    canonical = {alias: primary for primary, others in graph.aliases.items() for alias in others}
    names: list[str] = []
    for i, pattern in enumerate(cfg.layers):
        if pattern in modules:
            hits = [pattern]
        else:
            hits = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern) and isinstance(modules[n], COMPRESSIBLE)]
        _refuse_conv1d(cfg, modules, pattern, g, i)
        if not hits:
            known = ", ".join(graph.order[:12]) + (" …" if len(graph.order) > 12 else "")
            raise ConfigError(
                f"tasks[{g}].layers[{i}]: {pattern!r} matches no layer of the model; compressible layers: {known}"
            )
        for name in dict.fromkeys(canonical.get(h, h) for h in hits):
            module = modules[name]
            if not isinstance(module, COMPRESSIBLE):
                raise ConfigError(
                    f"tasks[{g}].layers[{i}]: {name!r} is a {type(module).__name__}; lcpress compresses "
                    f"nn.Linear and nn.Conv2d layers (name the layers inside it, e.g. '{name}.*')"
                )
            if name not in graph.specs:
                raise ConfigError(
                    f"tasks[{g}].layers[{i}]: layer {name!r} is not called by the forward pass on the example input"
                )
            if any(fnmatch.fnmatchcase(name, ex) for ex in cfg.exclude):
                continue
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError(f"tasks[{g}].exclude: every layer matched by 'layers' is excluded")
    return names


def _refuse_conv1d(cfg: TaskConfig, modules: dict[str, nn.Module], pattern: str, g: int, i: int) -> None:
    """A pattern that reaches transformers Conv1D layers fails, saying how to convert them."""
    from .hf import is_conv1d

    found = [n for n, m in modules.items() if n and is_conv1d(m) and fnmatch.fnmatchcase(n, pattern)
             and not any(fnmatch.fnmatchcase(n, ex) for ex in cfg.exclude)]
    if found:
        shown = ", ".join(found[:4]) + (" …" if len(found) > 4 else "")
        raise ConfigError(
            f"tasks[{g}].layers[{i}]: {pattern!r} matches transformers Conv1D layers ({shown}), GPT-2's Linear "
            f"with a transposed weight, which lcpress does not compress directly; convert them first with "
            f"lcpress.hf.conv1d_to_linear(model) (exact), or leave them out with 'exclude'"
        )

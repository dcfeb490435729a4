"""Realization: compressed layers replaced, in place, by the modules that compute them fast.

:func:`realize` asks each task's scheme for its realized module and keeps the
dense layer (holding Δ(θ)) wherever the realized form would cost more than
dense under the task's cost model. :func:`verify` checks the realized model
against the dense model loaded with Δ(θ). Every swap goes through
:func:`lcpress.core.surgery.replace_module`, so names and shared layers are kept.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lcpress.core.costmodel import CostModel
from lcpress.core.forms import Dense, Form, LayerSpec, form_to_dict
from lcpress.core.graph import parent_reading_weights
from lcpress.core.guard import plugin_call, plugin_label
from lcpress.core.plan import Task
from lcpress.core.registry import get_registry
from lcpress.core.scheme import Scheme, State, is_dense
from lcpress.core.surgery import call_model, first_tensor, get_module, in_mode, replace_module, tensors_in
from lcpress.errors import LcpressError, PluginError, listed
from lcpress.nn.architecture import unsupported, with_plugins

log = logging.getLogger("lcpress.realize")


@dataclass
class RealizedLayer:
    """What happened to one compressed layer."""

    name: str
    scheme: str
    form: dict[str, Any]
    realized: bool  # False: kept dense (holding Δ(θ)), because realizing would not pay
    weight_shape: list[int]
    reason: str = ""
    aliases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_compressed(tasks: Sequence[Task], states: Sequence[State]) -> None:
    """Write Δ(θ) into every task's parameters (the dense model of the compressed weights)."""
    with torch.no_grad():
        for task, state in zip(tasks, states):
            for p, value in zip(task.params, task.view.scatter(task.scheme.decompress(state))):
                p.copy_(value)


def realize(
    model: nn.Module, tasks: Sequence[Task], states: Sequence[State], aliases: dict[str, list[str]] | None = None,
    specs: Mapping[str, LayerSpec] | None = None, cost_models: Mapping[str, CostModel] | None = None,
) -> list[RealizedLayer]:
    """Replace, in place, every compressed layer of ``model`` by its realized module.

    The model is first loaded with Δ(θ). A multi-layer task is realized layer
    by layer when its scheme can :meth:`~lcpress.Scheme.split` its state. A
    layer stays a dense module holding Δ(θ) when its form is dense, when its
    realized form would cost more than dense under the cost model its budget is stated in (``cost_models``
    by the target's name; the task's own cost model without a target), with a warning: its compression is
    then not in the saved model; or when
    its parent reads its weight directly — so the model computes exactly the
    compressed function either way.
    """
    aliases, specs, cost_models = aliases or {}, specs or {}, cost_models or {}
    load_compressed(tasks, states)
    records: list[RealizedLayer] = []
    fused: dict[str, str] = {}  # compressed layers a fused parent keeps dense: the parent's class
    for task, state in zip(tasks, states):
        if task.scheme.scope == "model":
            records.extend(_realize_bound(model, task, state, aliases))
            continue
        for name, layer_state, reason in _layer_states(task, state):
            module = get_module(model, name)
            record = RealizedLayer(name, task.scheme.name, {}, False, list(module.weight.shape),
                                   aliases=list(aliases.get(name, [])))
            records.append(record)
            if layer_state is None:
                record.reason = reason
                continue
            form = task.scheme.form(layer_state)
            record.form = form_to_dict(form)
            record.reason = _kept_dense(model, name, task, form, is_dense(layer_state), specs.get(name, task.spec),
                                        judging_cost_model(task, cost_models))
            if record.reason:
                reader = parent_reading_weights(model, name)
                if reader and not isinstance(form, Dense):
                    fused[name] = reader
                continue
            new = _realized_module(task, layer_state, module)
            if new is module:
                raise LcpressError(f"scheme {task.scheme.name!r} returned the original module from realize()")
            problem = unsaveable(new)
            if problem:
                raise PluginError(f"{plugin_label(task.scheme)} realized layer {name!r}: {problem}")
            replace_module(model, name, new, record.aliases)
            record.realized = True
    if fused:
        _warn_fused(fused)
    return records


def _warn_fused(fused: dict[str, str]) -> None:
    """One warning for the layers a fused parent keeps dense: their compression is in their weights only."""
    log.warning("%d compressed layer(s) stay dense modules holding Δ(θ) (%s): their parent (%s) reads their "
                "weights inside its own forward (fused fast path), so no realized module can stand in for them: they "
                "compute with Δ(θ) but run, and are saved, at their dense size. To gain from them, build the blocks "
                "from modules that call their Linear children (as Hugging Face encoders do), or leave them out",
                len(fused), listed(fused), ", ".join(sorted(set(fused.values()))))


def _realize_bound(model: nn.Module, task: Task, state: State, aliases: dict[str, list[str]]) -> list[RealizedLayer]:
    """A model-scope task: every module its scheme rebuilds (smaller producers, consumers, norms) is replaced."""
    with plugin_call(task.scheme, f"in realize_layers() on {task.name!r}",
                     hint=" Fix the plugin; a run with an output_dir then resumes from its checkpoint."):
        new = {} if is_dense(state) else task.scheme.realize_layers(state, model)
        forms = dict(zip(task.layers, task.scheme.layer_forms(state, task.view.shapes)))
    records = []
    for name in dict.fromkeys([*task.layers, *new]):
        module = get_module(model, name)
        record = RealizedLayer(name, task.scheme.name, form_to_dict(forms.get(name, Dense())), name in new,
                               _weight_shape(module), aliases=list(aliases.get(name, [])))
        if name in new:
            replace_module(model, name, new[name], record.aliases)
        else:
            record.reason = "every channel it reads and writes was kept"
        records.append(record)
    return records


def _weight_shape(module: nn.Module) -> list[int]:
    weight = getattr(module, "weight", None)
    return list(weight.shape) if isinstance(weight, torch.Tensor) else []


def _layer_states(task: Task, state: State) -> list[tuple[str, State | None, str]]:
    """(layer, its own state or None, why none) for every layer of a task."""
    if task.single_layer:
        return [(task.name, state, "")]
    split = task.scheme.split(state, task.view.shapes)
    if split is None:
        reason = (f"part of a multi-layer task whose scheme ({task.scheme.name}) cannot split its state per layer: "
                  f"kept dense, holding Δ(θ)")
        return [(name, None, reason) for name in task.layers]
    return [(name, s, "") for name, s in zip(task.layers, split)]


def judging_cost_model(task: Task, cost_models: Mapping[str, CostModel]) -> CostModel:
    """The cost model that decides whether a layer's form is worth realizing: the one its budget is stated in.

    A ``target: {cost: params}`` over a token table chose a low rank because it stores fewer parameters;
    judged by the task's default ``cost: flops`` (0 for a lookup) the table would be kept dense and the
    delivered model would miss the budget the summary reports as met.
    """
    target = task.config.target
    return cost_models.get(target.cost, task.cost_model) if target is not None else task.cost_model


def costlier_than_dense(task: Task, spec: LayerSpec | None, form: Form, cost_models: Mapping[str, CostModel]) -> bool:
    """Whether realization will keep a layer's chosen form dense because it costs more than dense (what a preview
    shows the same way the finished run's table does)."""
    if spec is None or isinstance(form, Dense):
        return False
    cost, dense_cost = judging_cost_model(task, cost_models).costs(spec, [form, Dense()]).tolist()
    return cost > dense_cost


def _kept_dense(model: nn.Module, name: str, task: Task, form: Form, dense: bool, spec: LayerSpec | None,
                judge: CostModel) -> str:
    """Why layer ``name`` stays a dense module holding Δ(θ), or "" when it is realized."""
    reader = parent_reading_weights(model, name)
    if reader:
        return (f"kept dense, holding Δ(θ): its parent {reader} reads the layer's weight directly "
                f"(fused fast path), so a realized module cannot stand in for it")
    if dense or isinstance(form, Dense):
        return "dense was the best form"
    if not overrides_realize(task.scheme):
        log.warning("layer %r: scheme %r chose %s but has no realize() of its own, so the layer stays a dense layer "
                    "holding Δ(θ) and the saved model is not smaller; the plugin should override realize()",
                    name, task.scheme.name, form.describe())
        return f"{task.scheme.name} has no realize() of its own: kept dense, holding Δ(θ)"
    if spec is not None:
        cost, dense_cost = judge.costs(spec, [form, Dense()]).tolist()
        if cost > dense_cost:
            log.warning("layer %r: %s costs more than dense under %s (%.4g vs %.4g), so it stays a dense layer "
                        "holding Δ(θ) and its compression is not in the saved model; price it with the cost model "
                        "you care about (cost: storage for a smaller file, cost: params …)",
                        name, form.describe(), judge.name, cost, dense_cost)
            return f"{form.describe()} costs more than dense under {judge.name}: kept dense, holding Δ(θ)"
    return ""


def overrides_realize(scheme: Scheme) -> bool:
    """Whether ``scheme`` builds its own realized modules (the base :meth:`Scheme.realize` keeps a dense copy).

    Unwrapped first: the core wraps a subclass's ``realize`` to answer dense states itself.
    """
    return inspect.unwrap(type(scheme).realize) is not Scheme.realize


def unsaveable(module: nn.Module) -> str | None:
    """Why a model file could not rebuild ``module`` (a class neither lcpress's nor allow-listed), or None."""
    missing = unsupported(module, with_plugins(get_registry().modules))
    if not missing:
        return None
    return (f"realize() returned {', '.join(missing)}, which a model file cannot rebuild; allow-list the class with "
            f"the lcpress_register_modules hook (docs/plugins.md, section 7)")


def _realized_module(task: Task, state: State, module: nn.Module) -> nn.Module:
    """The scheme's realized module, with a failure reported as the plugin's, naming the layer."""
    with plugin_call(task.scheme, f"in realize() on layer {task.name!r}",
                     hint=" Fix the plugin; a run with an output_dir then resumes from its checkpoint without "
                          "redoing the LC steps."):
        return task.scheme.realize(state, module)


@torch.no_grad()
def eval_output(model: nn.Module, example_input: Any) -> torch.Tensor:
    """Every floating-point tensor the model outputs on ``example_input`` in eval mode, as one flat tensor (its own
    mode is restored): a tuple's first element may be an input passed through, and the check must see them all."""
    with in_mode(model, training=False):
        out = call_model(model, example_input)
    tensors = [t for t in tensors_in(out) if t.is_floating_point()]
    if not tensors:
        return first_tensor(out)
    return torch.cat([t.detach().reshape(-1).to(tensors[0].dtype) for t in tensors])


def verify(realized: nn.Module, expected: torch.Tensor, example_input: Any) -> float:
    """Largest absolute difference between ``realized``'s output on ``example_input`` and ``expected``.

    ``expected`` is the dense model's output holding Δ(θ), taken before realization, so no copy of the
    model is ever made (a copy doubles the memory of a large model, and some models cannot be deep-copied).
    """
    actual = eval_output(realized, example_input)
    return float((actual - expected).abs().max()) if actual.numel() else 0.0


def mismatch_warning(max_abs_error: float, expected: torch.Tensor) -> str | None:
    """What to tell the user when the realized model does not compute what Δ(θ) computes, beyond rounding; or None.

    Realized forms equal Δ(θ) up to float rounding (the tests hold them under 1e-5). A larger difference means a
    layer's module did more than its class's forward (a subclass's own forward, a hook) or the model reads a layer
    in a way no realized module reproduces; checks before training refuse the known cases, this catches the rest.
    """
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    if not math.isfinite(max_abs_error) and math.isfinite(scale):
        return (f"the realized model outputs NaN or infinite values where Δ(θ)'s outputs are finite: a realized "
                f"layer's intermediate overflowed {expected.dtype}. Run the model in float32 or bfloat16, or exclude "
                f"the layer whose thin layers overflow")
    if not math.isfinite(max_abs_error) or scale == 0.0:
        return None if max_abs_error == 0.0 else f"the realized model's output differs from Δ(θ)'s ({max_abs_error})"
    relative = 1e-3 if expected.dtype in (torch.float32, torch.float64) else 5e-2  # half types round far more
    if max_abs_error <= relative * scale:
        return None
    share = max_abs_error / scale
    return (f"the realized model's output differs from Δ(θ)'s by up to {max_abs_error:.3g} ({share:.1%} "
            f"of its largest output): a compressed layer computes something its realized module does not (a "
            f"subclass with its own forward, a hook, code that reads the layer's weight). The metric reported is "
            f"Δ(θ)'s, not the returned model's; evaluate the returned model, and exclude the layer that differs")


def realize_and_verify(
    model: nn.Module, tasks: Sequence[Task], states: Sequence[State], example_input: Any, expected: torch.Tensor,
    aliases: dict[str, list[str]] | None = None, specs: Mapping[str, LayerSpec] | None = None,
    cost_models: Mapping[str, CostModel] | None = None,
) -> tuple[list[RealizedLayer], float]:
    """:func:`realize`, then :func:`verify` (one run of the model); a task whose realized modules the model's
    forward cannot run with is put back, dense and holding Δ(θ), with a warning — never a broken model.

    Some forwards read a layer's ``.weight`` themselves (a ViT patch embedding checks its dtype) or cut a
    layer's output into parts of sizes fixed in their code; realized modules cannot stand in there. Only
    when that run fails are the tasks realized one at a time, each run once, to find which.
    """
    before = dict(model.named_modules(remove_duplicate=False))
    records = realize(model, tasks, states, aliases, specs, cost_models)
    try:
        return records, verify(model, expected, example_input)
    except LcpressError:  # lcpress's own refusal (outputs it cannot compare): not a module the forward rejects
        raise
    except Exception:  # the user's forward, with modules it was not written for: find which below
        _put_back(model, before)
    records = []
    for task, state in zip(tasks, states):
        current = dict(model.named_modules(remove_duplicate=False))
        found = realize(model, [task], [state], aliases, specs, cost_models)
        problem = _run_problem(model, example_input) if any(r.realized for r in found) else None
        if problem is not None:
            _put_back(model, current)
            names = [r.name for r in found if r.realized]
            log.warning("the model's forward does not run with %s realized (%s), so %s dense, holding Δ(θ); its "
                        "compression is not in the saved model", listed(names), problem,
                        "it stays" if len(names) == 1 else "they stay")
            for record in found:
                if record.realized:
                    record.realized = False
                    record.reason = f"the forward does not run with it realized ({problem}): kept dense, holding Δ(θ)"
        records += found
    return records, verify(model, expected, example_input)


def _run_problem(model: nn.Module, example_input: Any) -> str | None:
    """What the model raises on the example input, as one line; None when it runs."""
    try:
        eval_output(model, example_input)
    except Exception as exc:  # the user's forward, with modules it was not written for: any error
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _put_back(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Restore the module tree ``modules`` recorded (``named_modules``, parents first), whatever replaced what."""
    for name, module in modules.items():
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        if parent._modules.get(child) is not module:
            parent._modules[child] = module

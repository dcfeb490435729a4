"""The base class of cost models.

A cost model prices a layer (:class:`LayerSpec`) in a form (:class:`Form`).
The C step asks for the costs of all candidate forms at once through
:meth:`CostModel.costs`; the default loops over :meth:`CostModel.cost` and
caches every price, so measured models only measure what the search needs.

Every price reaches the core through :meth:`CostModel.costs` (``dense_cost``
and ``total`` call it too), so that is where a cost model is guarded, whoever
called — the engine, realization or a report: the base guards each call of
:meth:`CostModel.cost`, a subclass's own ``costs`` is wrapped in the same
guard, a plugin that raises becomes a :class:`~lcpress.PluginError` naming it
and the layer, and a price that is not a finite, non-negative number is
refused before it can steer a selection.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch

from lcpress.core.forms import Dense, Form, LayerSpec
from lcpress.core.guard import plugin_call
from lcpress.errors import PluginContractError
from lcpress.options import Options

Costs = Callable[["CostModel", LayerSpec, Sequence[Form]], torch.Tensor]


def as_price(value: object) -> float | None:
    """``value`` as a price: anything ``float()`` turns into a finite, non-negative number (NumPy scalars and 0-d
    tensors included); None for anything else. The core and the conformance kit accept exactly these."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def layer_text(spec: LayerSpec) -> str:
    """``"the linear 2048→256 layer"``: a layer as a cost model sees it (it is not told the layer's name)."""
    return f"the {spec.kind} {spec.in_channels}→{spec.out_channels} layer"


def batch_text(model: CostModel, default: int | None) -> str:
    """Where a price or a measurement holds, for a message: ``" at batch 32"`` (the model's ``batch_size``, else
    ``default``), ``" at batches 1, 32 (per example, summed)"`` for a model priced over ``batch_sizes``, or ``""``
    when neither is known."""
    batches = getattr(model.options, "batch_sizes", None)
    if batches:
        return f" at batches {', '.join(map(str, batches))} (per example, summed)"
    batch = getattr(model.options, "batch_size", None) or default
    return f" at batch {batch}" if batch else ""


def _guarded(costs: Costs) -> Costs:
    """``costs`` under the plugin guard, its prices checked: what every caller of ``costs()`` gets."""
    @functools.wraps(costs)
    def wrapper(self: CostModel, spec: LayerSpec, forms: Sequence[Form]) -> torch.Tensor:
        forms = list(forms)
        with plugin_call(self, f"pricing {layer_text(spec)}"):
            prices = costs(self, spec, forms)
            problem = _prices_problem(prices, forms)
            if problem:
                raise PluginContractError(f"{problem} for {layer_text(spec)}; costs must be finite and non-negative "
                                          f"numbers, one per form")
        return prices

    wrapper.__lcpress_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


def _prices_problem(prices: Any, forms: list[Form]) -> str | None:
    """What is wrong with what ``costs()`` returned for ``forms``, or None."""
    try:
        values = torch.as_tensor(prices, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return f"costs() returned a {type(prices).__name__}, not a tensor of prices"
    if values.numel() != len(forms):
        return f"costs() returned {values.numel()} prices for {len(forms)} forms"
    bad = (~torch.isfinite(values) | (values < 0)).nonzero()
    if len(bad):
        i = int(bad[0])
        return f"costs() priced form {forms[i].describe()!r} at {values[i].item()}"
    return None


class CostModel(ABC):
    """What a layer in a given form costs on a target. Subclass and register."""

    name: ClassVar[str]
    #: Unit shown in tables ("params", "FLOPs", "ms", "J").
    unit: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self._cache: dict[tuple[LayerSpec, Form], float] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Guard a subclass's own ``costs()`` as the base's is (see the module docstring)."""
        super().__init_subclass__(**kwargs)
        costs = cls.__dict__.get("costs")
        if callable(costs) and not getattr(costs, "__lcpress_guarded__", False):
            cls.costs = _guarded(costs)  # type: ignore[method-assign]

    def unavailable_reason(self) -> str | None:
        """Why this model cannot run here (no GPU, no NVML …), or None if it can."""
        return None

    def for_layers(self, specs: Mapping[str, LayerSpec]) -> None:
        """Learn what a price depends on beyond one layer, from every traced layer of the model to compress.

        Planning calls it once, before any price is asked for. A layer timed alone, for instance, runs with
        its weights in cache, which inside a model it does not: ``cpu_latency``'s ``working_set_mb: auto``
        reads the model's weight size here. Default: nothing.
        """

    @abstractmethod
    def cost(self, spec: LayerSpec, form: Form) -> float:
        """Cost of layer ``spec`` realized in ``form`` (non-negative, finite)."""

    def costs(self, spec: LayerSpec, forms: Sequence[Form]) -> torch.Tensor:
        """Costs of many forms of one layer, as a float64 tensor (cached; each checked finite and non-negative)."""
        out = []
        for form in forms:
            key = (spec, form)
            if key not in self._cache:
                self._cache[key] = self._priced(spec, form)
            out.append(self._cache[key])
        return torch.tensor(out, dtype=torch.float64)

    def _priced(self, spec: LayerSpec, form: Form) -> float:
        """One price from :meth:`cost`, guarded and checked (once: the selection's loops read the cache)."""
        with plugin_call(self, f"pricing {layer_text(spec)} in form {form.describe()!r}"):
            return self._checked(spec, form, self.cost(spec, form))

    def _checked(self, spec: LayerSpec, form: Form, value: object) -> float:
        """``value`` as a float; anything else would steer every selection, so the guard around the call refuses it."""
        number = as_price(value)
        if number is None:
            raise PluginContractError(f"cost() priced {layer_text(spec)} in form {form.describe()!r} at {value!r}; "
                                      f"costs must be finite and non-negative numbers")
        return number

    def dense_cost(self, spec: LayerSpec) -> float:
        return float(self.costs(spec, [Dense()])[0])

    def total(self, priced: Iterable[tuple[LayerSpec, Form]]) -> float:
        """Cost of a model: the sum over its layers (sequential execution)."""
        return sum(float(self.costs(spec, [form])[0]) for spec, form in priced)

"""The base class of cost models.

A cost model prices a layer (:class:`LayerSpec`) in a form (:class:`Form`).
The C step asks for the costs of all candidate forms at once through
:meth:`CostModel.costs`; the default loops over :meth:`CostModel.cost` and
caches every price, so measured models only measure what the search needs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Iterable, Sequence

import torch

from lcpress.core.forms import Dense, Form, LayerSpec
from lcpress.errors import PluginError
from lcpress.options import Options


class CostModel(ABC):
    """What a layer in a given form costs on a target. Subclass and register."""

    name: ClassVar[str]
    #: Unit shown in tables ("params", "FLOPs", "ms", "J").
    unit: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self._cache: dict[tuple[LayerSpec, Form], float] = {}

    def unavailable_reason(self) -> str | None:
        """Why this model cannot run here (no GPU, no NVML …), or None if it can."""
        return None

    @abstractmethod
    def cost(self, spec: LayerSpec, form: Form) -> float:
        """Cost of layer ``spec`` realized in ``form`` (non-negative, finite)."""

    def costs(self, spec: LayerSpec, forms: Sequence[Form]) -> torch.Tensor:
        """Costs of many forms of one layer, as a float64 tensor (cached; each checked finite and non-negative)."""
        out = []
        for form in forms:
            key = (spec, form)
            if key not in self._cache:
                self._cache[key] = self._checked(spec, form, self.cost(spec, form))
            out.append(self._cache[key])
        return torch.tensor(out, dtype=torch.float64)

    def _checked(self, spec: LayerSpec, form: Form, value: object) -> float:
        """``value`` as a float, or a :class:`PluginError`: a NaN or negative price would steer every selection."""
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise PluginError(
                f"cost model {self.name!r} priced the {spec.kind} {spec.in_channels}→{spec.out_channels} layer in "
                f"form {form.describe()!r} at {value!r}; costs must be finite and non-negative numbers"
            )
        return number

    def dense_cost(self, spec: LayerSpec) -> float:
        return float(self.costs(spec, [Dense()])[0])

    def total(self, priced: Iterable[tuple[LayerSpec, Form]]) -> float:
        """Cost of a model: the sum over its layers (sequential execution)."""
        return sum(float(self.costs(spec, [form])[0]) for spec, form in priced)

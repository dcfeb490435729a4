"""The conformance checks of a cost model.

A cost model prices a layer (:class:`~lcpress.LayerSpec`) in a form. The C
step relies on three things, checked here:

* the dense form of every layer can be priced (dense is always a candidate,
  so the core can keep a layer as it is);
* every price is a finite, non-negative number;
* the vectorized path ``costs(spec, forms)`` — what the C step calls — equals
  the scalar ``cost(spec, form)``, is float64, and a fresh instance with the
  same options gives the same prices (so a resumed run selects the same forms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, get_args

import torch

from lcpress.core.costmodel import CostModel, as_price
from lcpress.core.forms import Dense, Form, LayerSpec, LowRank
from lcpress.linalg.matrices import Shape
from lcpress.options import Options
from .layers import default_layers
from .report import require


@dataclass
class CostModelSubject:
    """A cost-model class with its options, and the (layer, forms) pairs it is checked on."""

    cls: type[CostModel]
    options: Options
    cases: list[tuple[LayerSpec, list[Form]]]
    #: the layer being checked, in words: what a failure the plugin raises is reported on
    at: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.cls.name

    def model(self) -> CostModel:
        return self.cls(self.options)

    def each(self) -> Iterator[tuple[LayerSpec, list[Form]]]:
        """The (layer, forms) pairs to check, each layer named in :attr:`at` while it is checked."""
        for spec, forms in self.cases:
            self.at = _where(self, spec)
            yield spec, forms


Check = Callable[[CostModelSubject], "str | None"]


def default_forms(spec: LayerSpec) -> list[Form]:
    """Dense, and low-rank forms of a few ranks (channel and, for convolutions, spatial and input shapes)."""
    forms: list[Form] = [Dense()]
    if spec.groups != 1:
        return forms
    shapes = list(get_args(Shape)) if spec.kind == "conv2d" and spec.kernel_size != (1, 1) else ["channel"]
    top = min(spec.in_channels, spec.out_channels)
    for rank in sorted({1, max(1, top // 4), max(1, top // 2)}):
        forms += [LowRank(rank, shape) for shape in shapes]
    return forms


def default_cases() -> list[tuple[LayerSpec, list[Form]]]:
    specs = [case.spec() for case in default_layers()]
    return [(spec, default_forms(spec)) for spec in specs]


def _where(s: CostModelSubject, spec: LayerSpec, form: Form | None = None) -> str:
    layer = f"{spec.kind} {spec.in_channels}→{spec.out_channels} at input {tuple(spec.input_shape)}"
    return f"cost model {s.name!r} on {layer}" + (f", form {form!r}" if form is not None else "")


def _valid(s: CostModelSubject, spec: LayerSpec, value: object, form: Form) -> float:
    """A price the core accepts (:func:`lcpress.core.costmodel.as_price`: NumPy scalars and 0-d tensors too)."""
    price = as_price(value)
    require(price is not None, f"{_where(s, spec, form)}: cost must be finite and non-negative, got {value!r}")
    return price


def check_declaration(s: CostModelSubject) -> str | None:
    """Class attributes the registry, config and reports rely on."""
    require(isinstance(getattr(s.cls, "name", None), str) and s.cls.name,
            f"{s.cls.__name__} needs a class attribute 'name' (the string configs use)")
    require(isinstance(s.cls.unit, str), f"cost model {s.name!r}: 'unit' must be a string (shown in tables)")
    require(isinstance(s.cls.Options, type) and issubclass(s.cls.Options, Options),
            f"cost model {s.name!r}: Options must subclass lcpress.Options")
    return None


def check_dense(s: CostModelSubject) -> str | None:
    """The dense form of every layer has a finite, non-negative price."""
    model = s.model()
    for spec, _ in s.each():
        _valid(s, spec, model.cost(spec, Dense()), Dense())
    return None


def check_finite(s: CostModelSubject) -> str | None:
    """Every form of every layer has a finite, non-negative price."""
    model = s.model()
    for spec, forms in s.each():
        for form in forms:
            _valid(s, spec, model.cost(spec, form), form)
    return None


def check_vectorized(s: CostModelSubject) -> str | None:
    """``costs(spec, forms)`` is a float64 vector equal to the scalar prices, stable across instances."""
    vectorized, scalar, again = s.model(), s.model(), s.model()
    for spec, forms in s.each():
        where = _where(s, spec)
        batch = vectorized.costs(spec, forms)
        require(isinstance(batch, torch.Tensor) and batch.dtype == torch.float64 and tuple(batch.shape) == (len(forms),),
                f"{where}: costs() must return a float64 tensor of shape ({len(forms)},), got "
                f"{getattr(batch, 'dtype', type(batch).__name__)} {tuple(getattr(batch, 'shape', ()))}")
        one_by_one = [float(scalar.cost(spec, f)) for f in forms]
        for form, a, b in zip(forms, batch.tolist(), one_by_one):
            require(_close(a, b), f"{_where(s, spec, form)}: costs() gives {a!r} but cost() gives {b!r}")
        repeat = again.costs(spec, list(reversed(forms))).flip(0)
        require(_close_all(repeat.tolist(), batch.tolist()),
                f"{where}: a second instance with the same options prices these forms differently "
                f"({repeat.tolist()} vs {batch.tolist()})")
        total = vectorized.total([(spec, f) for f in forms])
        require(_close(total, float(batch.sum())), f"{where}: total() must be the sum of the layer costs")
    return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-30)


def _close_all(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))


#: Every cost-model check, by name.
COST_MODEL_CHECKS: dict[str, Check] = {
    "declaration": check_declaration,
    "dense": check_dense,
    "finite": check_finite,
    "vectorized": check_vectorized,
}

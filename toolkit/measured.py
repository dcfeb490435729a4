"""Cost models that *measure*, with a persistent lookup table per device.

Measuring a layer form takes tens of milliseconds to seconds, so every
measurement is kept in a JSON table in a cache directory
(``$LCPRESS_CACHE_DIR``, else ``~/.cache/lcpress``, or the model's
``cache_dir`` option). A table belongs to one device fingerprint — CPU model,
thread count and torch version; or GPU UUID, driver and clocks — and its file
name carries a hash of it, so a table measured on another device is never read
for this one (the fingerprint stored inside is checked too). Writes are atomic
(temporary file, then rename). A table that cannot be parsed is set aside as
``*.corrupt-<time>`` with a warning and rebuilt.

Subclasses implement :meth:`MeasuredCostModel.measure` and
:meth:`MeasuredCostModel.fingerprint`; only the forms a C step asks for are
measured (lazily), and each at most once per device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import write_text_atomic
from .costmodel import CostModel
from .forms import Form, LayerSpec, form_to_dict
from .modules import GroupedLinear, ParallelSum, ScatterChannels

log = logging.getLogger("lcpress.measured")

TABLE_FORMAT = "lcpress-cost-table"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LCPRESS_CACHE_DIR") or Path.home() / ".cache" / "lcpress")


def primitive_module(spec: LayerSpec) -> nn.Module:
    """A runnable torch module for one primitive layer (random weights)."""
    if spec.kind == "linear":
        if spec.groups > 1:
            return GroupedLinear(spec.in_channels, spec.out_channels, spec.groups)
        return nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
    return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                     spec.dilation, spec.groups, bias=spec.bias)


class _View(nn.Module):
    """Reshape to ``(-1, *tail)``: the free view between primitives of a chain (see :meth:`Form.branches`)."""

    def __init__(self, tail: tuple[int, ...]) -> None:
        super().__init__()
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.tail)


def _chain(spec: LayerSpec, prims: tuple[LayerSpec, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    shape = tuple(spec.input_shape)
    for p in prims:
        if tuple(p.input_shape) != shape:
            layers.append(_View(tuple(p.input_shape[1:])))
        layers.append(primitive_module(p))
        shape = tuple(p.output_shape)
    return nn.Sequential(*layers)


def form_module(spec: LayerSpec, form: Form) -> nn.Module:
    """The primitives of ``form`` for layer ``spec``, in execution order (parallel branches summed)."""
    branches = form.branches(spec)
    chains = [_chain(spec, branch) for branch in branches]
    if form.fills_outputs:  # the pruned outputs are put back in place: time that copy too
        for chain, branch in zip(chains, branches):
            kept = branch[-1].out_channels
            scatter = ScatterChannels(spec.out_channels, kept, dim=1 if spec.kind == "conv2d" else -1)
            scatter.index.copy_(torch.arange(kept))
            chain.append(scatter)
    return chains[0] if len(chains) == 1 else ParallelSum(chains)


class CostTable:
    """Measurements of one cost model on one device, persisted as JSON."""

    def __init__(self, directory: Path, model_name: str, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(directory) / f"{model_name}-{digest}.json"
        self.model_name = model_name
        self.entries: dict[str, float] = {}
        self.hits = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != TABLE_FORMAT or not isinstance(doc.get("entries"), dict):
                raise ValueError("not an lcpress cost table")
            entries = {str(k): float(v) for k, v in doc["entries"].items()}
        except (OSError, ValueError, TypeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.warning("cost table %s is unreadable (%s); moved it to %s and measuring afresh", self.path, exc, aside)
            return
        if doc.get("fingerprint") != self.fingerprint:
            log.warning("cost table %s was measured on another device; ignoring it", self.path)
            return
        self.entries = entries

    def get(self, key: str) -> float | None:
        value = self.entries.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, value: float) -> None:
        self.entries[key] = value
        doc = {"format": TABLE_FORMAT, "cost_model": self.model_name, "fingerprint": self.fingerprint,
               "entries": self.entries}
        write_text_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True))


def table_key(spec: LayerSpec, form: Form, extra: dict[str, Any]) -> str:
    """Canonical text of what was measured: the layer, the form, and the measuring options."""
    return json.dumps({"spec": spec.to_dict(), "form": form_to_dict(form), **extra}, sort_keys=True)


class MeasuredCostModel(CostModel):
    """A cost model whose costs come from measurements, kept per device."""

    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options)
        self._table: CostTable | None = None
        self.measurements = 0

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the device (and software) the measurements hold for."""

    @abstractmethod
    def measure(self, spec: LayerSpec, form: Form) -> float:
        """Measure ``form`` of ``spec`` on this device now."""

    def measure_options(self) -> dict[str, Any]:
        """Options that change a measurement (batch size, dtype …); part of the table key."""
        return self.options.to_dict() if hasattr(self.options, "to_dict") else {}

    @property
    def table(self) -> CostTable:
        if self._table is None:
            directory = getattr(self.options, "cache_dir", None) or default_cache_dir()
            self._table = CostTable(Path(directory), self.name, self.fingerprint())
        return self._table

    def cost(self, spec: LayerSpec, form: Form) -> float:
        reason = self.unavailable_reason()
        if reason:
            from .errors import LcpressError

            raise LcpressError(f"cost model {self.name!r} is not available here: {reason}")
        options = {k: v for k, v in self.measure_options().items() if k != "cache_dir"}
        key = table_key(spec, form, options)
        value = self.table.get(key)
        if value is None:
            value = float(self.measure(spec, form))
            self.measurements += 1
            self.table.put(key, value)
        return value


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

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

A form that does more FLOPs than the dense layer *and* stores more numbers
(a factorization above its break-even rank) is not measured: it is priced
from the dense layer's measurement (see :func:`more_work_than_dense`).

A measurement taken while something else used the device is too slow, never
too fast. So a fresh measurement is checked against the other forms of the
same layer and structure known so far (e.g. every rank of a factorization):
when a form doing less work is much slower than one doing more — or one
doing a little more work is much slower than that — the suspect is measured
again and the fastest of its measurements is kept (see
:meth:`MeasuredCostModel.recheck`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import logging
import os
import time
import uuid
import weakref
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lcpress.atomic import write_text_atomic
from lcpress.core.costmodel import CostModel
from lcpress.core.forms import Dense, Form, LayerSpec, Resized, form_to_dict
from lcpress.nn.modules import GroupedLinear, ParallelSum, PointwiseConv2d, ScatterChannels, is_plain_pointwise

log = logging.getLogger("lcpress.measured")

TABLE_FORMAT = "lcpress-cost-table"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LCPRESS_CACHE_DIR") or Path.home() / ".cache" / "lcpress")


#: Part of every measured table's key: bump it when :func:`primitive_module` builds a primitive differently,
#: so tables measured with the old modules are not read as prices of the new ones.
PRIMITIVES_VERSION = 3


def timing_input(spec: LayerSpec, batch_size: int | None, dtype: torch.dtype,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """A random input of layer ``spec`` (at ``batch_size``, if given) to time its forms on: indices for a table."""
    shape = list(spec.input_shape)
    if batch_size is not None:
        shape[0] = batch_size
    if spec.kind == "embedding":
        return torch.randint(spec.in_channels, shape, device=device)
    return torch.randn(*shape, dtype=dtype, device=device)


def primitive_module(spec: LayerSpec, stage: bool = False) -> nn.Module:
    """A runnable torch module for one primitive layer (random weights): the module realization builds for it.

    An attention core (``spec.kind == "attention"``) is :class:`AttentionCore`: no weights, the head split,
    ``scaled_dot_product_attention`` and the head merge.

    A plain 1×1 conv that is one ``stage`` of a factorized layer is realized as
    :class:`PointwiseConv2d` (a GEMM), so it is timed as one; a layer that is
    one primitive keeps its own kind.
    """
    if spec.kind == "attention":
        return AttentionCore(spec.groups, spec.out_channels // spec.groups)
    if spec.kind == "embedding":
        return nn.Embedding(spec.in_channels, spec.out_channels)
    if spec.kind == "linear":
        if spec.groups > 1:
            return GroupedLinear(spec.in_channels, spec.out_channels, spec.groups)
        return nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
    if stage and is_plain_pointwise(spec.kernel_size, spec.stride, spec.padding, spec.dilation, spec.groups):
        return PointwiseConv2d(spec.in_channels, spec.out_channels, bias=spec.bias)
    return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                     spec.dilation, spec.groups, bias=spec.bias)


class AttentionCore(nn.Module):
    """Multi-head self-attention without its projections: what a measured cost model times for a head count.

    Reads ``(batch, sequence, heads·head size)`` queries and uses them as keys
    too, splits the heads, runs ``scaled_dot_product_attention`` and merges the
    heads back — the reshapes and the copy included, as a transformer's
    attention layer does them. Values are as wide as ``value_size`` per head
    (the queries themselves when that is the head size).
    """

    def __init__(self, heads: int, value_size: int) -> None:
        super().__init__()
        self.heads, self.value_size = heads, value_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q = x.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)
        v = q if q.shape[-1] == self.value_size else q.new_empty(batch, self.heads, length, self.value_size)
        out = F.scaled_dot_product_attention(q, q, v)
        return out.transpose(1, 2).reshape(batch, length, self.heads * self.value_size)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, value_size={self.value_size}"


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
        layers.append(primitive_module(p, stage=len(prims) > 1))
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


#: The most often a cost table is written while measurements come in, in seconds.
WRITE_EVERY = 2.0


def _flush_if_alive(table: "weakref.ref[CostTable]") -> None:
    alive = table()
    if alive is not None:
        alive.flush()


class CostTable:
    """Measurements of one cost model on one device, persisted as JSON."""

    def __init__(self, directory: Path, model_name: str, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(directory) / f"{model_name}-{digest}.json"
        self.model_name = model_name
        self.entries: dict[str, float] = {}
        self.hits = 0
        self.unsaved = False  # the folder cannot be written: entries live in memory only
        self.dirty = False  # entries not written yet (see put)
        self._written = 0.0  # time.monotonic() of the last write
        self._load()
        atexit.register(_flush_if_alive, weakref.ref(self))  # what a run measured last is kept, however it ends

    def _load(self) -> None:
        entries = self._read(quiet=False)
        if entries is not None:
            self.entries = entries

    def _read(self, quiet: bool) -> dict[str, float] | None:
        """The table's entries on disk, if it holds a table of this device; a damaged one is moved aside.

        ``quiet``: re-read before a write (another process may have added entries); damage and other devices'
        tables are then left to the first read's warning.
        """
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT or not isinstance(doc.get("entries"), dict):
                raise ValueError("not an lcpress cost table")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc["entries"].values()):
                raise ValueError("it holds an entry that is not a number")
            entries = {str(k): float(v) for k, v in doc["entries"].items()}
            if not all(math.isfinite(v) and v >= 0 for v in entries.values()):
                raise ValueError("it holds a NaN, infinite or negative cost")
        except (OSError, ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested past Python's stack
            if not quiet:
                self._set_aside(exc)
            return None
        if doc.get("fingerprint") != self.fingerprint:
            if not quiet:
                log.warning("cost table %s was measured on another device; ignoring it", self.path)
            return None
        return entries

    def _set_aside(self, problem: Exception) -> None:
        """Move a damaged table out of the way (never delete what may be evidence), or leave it if that fails."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-"
                                    f"{uuid.uuid4().hex[:8]}")  # never over an earlier one set aside this second
        try:
            os.replace(self.path, aside)
        except OSError as exc:  # a read-only folder, or another process moved it first
            log.warning("cost table %s is unreadable (%s) and cannot be moved aside (%s); measuring afresh",
                        self.path, problem, exc)
            return
        log.warning("cost table %s is unreadable (%s); moved it to %s and measuring afresh", self.path, problem, aside)

    def get(self, key: str, counted: bool = True) -> float | None:
        """The entry for ``key``, if measured; ``counted``: a form's price read from the table (:attr:`hits`)."""
        value = self.entries.get(key)
        if value is not None and counted:
            self.hits += 1
        return value

    def put(self, key: str, value: float) -> None:
        """Add an entry; the table is written (:meth:`flush`) if it was not in the last :data:`WRITE_EVERY` seconds.

        A folder that cannot be written keeps the table in memory for this run, with one warning: the run's
        prices are as good, only the next run measures again.
        """
        self.entries[key] = value
        self.dirty = True
        if time.monotonic() - self._written >= WRITE_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the entries not written yet, merged with what other processes wrote since.

        A table of thousands of entries costs tens of milliseconds to write; :meth:`put` writes at most once
        every :data:`WRITE_EVERY` seconds (a large model measures thousands of forms), and a cost model flushes
        after each layer's forms.
        """
        if not self.dirty or self.unsaved:
            return
        self.dirty, self._written = False, time.monotonic()
        self.entries = {**(self._read(quiet=True) or {}), **self.entries}
        doc = {"format": TABLE_FORMAT, "cost_model": self.model_name, "fingerprint": self.fingerprint,
               "entries": self.entries}
        try:
            write_text_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True))
        except OSError as exc:
            self.unsaved = True
            log.warning("cost table %s cannot be written (%s): this run keeps its measurements in memory, and the "
                        "next measures them again; point LCPRESS_CACHE_DIR (or cost_models.%s.cache_dir) at a "
                        "writable folder to keep them", self.path, exc, self.model_name)


@dataclass
class Known:
    """One table entry this process has looked at, with the work its form does."""

    key: str
    form: Form
    work: int
    value: float
    rechecked: int = 0
    reported: bool = False


def structure(spec: LayerSpec, form: Form) -> tuple:
    """What must match for two forms' costs to be comparable: the primitives' kinds, groups and kernels."""
    return tuple(tuple((p.kind, p.groups, p.kernel_size, p.stride) for p in branch) for branch in form.branches(spec))


def suspect(a: Known, b: Known, factor: float) -> Known | None:
    """The one of two comparable measurements that looks slowed down by interference, if either does.

    With ``a`` doing no more work than ``b``: ``a`` is suspect when it is over
    ``factor`` times slower than ``b``; ``b`` when its time grows over
    ``factor`` times faster than its work. Genuine staircases (rank 47 slower
    than rank 48) stay below a small factor; a busy core does not.
    """
    if a.work > b.work:
        a, b = b, a
    if a.value > factor * b.value:
        return a
    if a.value > 0 and b.value / a.value > factor * max(1.0, b.work / max(a.work, 1)):
        return b
    return None


def form_flops(spec: LayerSpec, form: Form) -> int:
    """FLOPs of ``form`` for layer ``spec``: its primitives', as the ``flops`` cost model counts them."""
    return sum(p.flops for p in form.primitives(spec))


def more_work_than_dense(spec: LayerSpec, form: Form) -> bool:
    """Whether ``form`` does more FLOPs than the dense layer and stores more numbers too.

    Such a form is never worth choosing: dense computes the layer exactly, with less arithmetic and fewer
    weights to read. Low-rank candidates above the break-even rank ``mn/(m+n)`` are the common case (half of
    a square layer's ranks, and the slowest to time). Both counts must exceed dense: a low-rank embedding does
    more FLOPs than its table lookup but stores less, and a quantized or sparse form does the dense FLOPs.
    """
    if isinstance(form, Dense):
        return False
    dense = Dense()
    return (form_flops(spec, form) > form_flops(spec, dense)
            and form.param_count(spec) > dense.param_count(spec))


def work_over_dense(spec: LayerSpec, form: Form) -> float:
    """How many times the dense layer's work ``form`` does: the larger of its FLOPs and parameter ratios (those
    defined: an embedding's lookup counts no FLOPs); above 1 for a form :func:`more_work_than_dense`."""
    dense = Dense()
    pairs = ((form_flops(spec, form), form_flops(spec, dense)), (form.param_count(spec), dense.param_count(spec)))
    return max((mine / theirs for mine, theirs in pairs if theirs > 0), default=2.0)


def table_key(spec: LayerSpec, form: Form, extra: dict[str, Any]) -> str:
    """Canonical text of what was measured: the layer, the form, and the measuring options.

    A form is named by its ``kind`` and fields; a plugin's form that leaves ``kind`` at the base's ``"form"`` is
    named by its class too, so two such forms with the same fields never read each other's times.
    """
    described = form_to_dict(form)
    if form.kind == Form.kind:
        described["class"] = f"{type(form).__module__}.{type(form).__qualname__}"
    return json.dumps({"spec": spec.with_(tied=False).to_dict(), "form": described, **extra}, sort_keys=True)


class MeasuredCostModel(CostModel):
    """A cost model whose costs come from measurements, kept per device."""

    recheck_factor: float | None = 1.25
    """How far out of line (see :func:`suspect`) a measurement must be to be measured again; None: never.

    On a shared machine single entries often come back 1.3–1.5× too slow (the thread clock does not
    exclude a busy sibling core or a cold cache), which a factor of 2 lets through; a real staircase
    costs at most ``recheck_attempts`` more measurements per entry, and is kept."""
    recheck_attempts: int = 2
    """How many more times a suspect measurement is taken; the fastest is kept."""
    measure_more_work: bool = False
    """Whether forms doing more work than dense (:func:`more_work_than_dense`) are measured too.

    False: such a form is priced as the dense layer's measurement times :func:`work_over_dense`, a price
    above dense's, so no selection prefers it to dense (which has no error either), and its time is
    not spent measuring it. A subclass for a device that runs some such forms faster than dense sets True."""

    @staticmethod
    def torch_dtype(name: str) -> torch.dtype:
        """The torch dtype a ``dtype`` option names ("float32", "bfloat16", "float16")."""
        return torch_dtype(name)

    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options)
        self._table: CostTable | None = None
        self._known: dict[tuple[str, tuple], dict[str, Known]] = {}
        self.measurements = 0
        self.remeasured = 0
        #: forms priced from the dense measurement without being measured (see :attr:`measure_more_work`)
        self.estimated: set[tuple[LayerSpec, Form]] = set()

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the device (and software) the measurements hold for."""

    @abstractmethod
    def measure(self, spec: LayerSpec, form: Form) -> float:
        """Measure ``form`` of ``spec`` on this device now."""

    def measure_model(self, model: nn.Module, example_input: Any) -> float | None:
        """The whole model's cost on this device for ``example_input`` (at the model's batch size option, if any).

        Runs call it at the end of a run whose target is this cost model, to
        report the measured dense and compressed model side by side (the
        layer table only adds up layers). Default: None (not measurable).
        """
        return None

    def measure_options(self) -> dict[str, Any]:
        """Options that change a measurement (batch size, dtype …); part of the table key."""
        return self.options.to_dict() if hasattr(self.options, "to_dict") else {}

    @property
    def table(self) -> CostTable:
        if self._table is None:
            directory = getattr(self.options, "cache_dir", None) or default_cache_dir()
            self._table = CostTable(Path(directory), self.name, {**self.fingerprint(), "primitives": PRIMITIVES_VERSION})
        return self._table

    def cost(self, spec: LayerSpec, form: Form) -> float:
        reason = self.unavailable_reason()
        if reason:
            from lcpress.errors import LcpressError

            raise LcpressError(f"cost model {self.name!r} is not available here: {reason}")
        if spec.calls != 1:  # measured once per call: a layer the forward runs n times costs n calls
            return spec.calls * self.cost(spec.with_(calls=1), form)
        if isinstance(form, Resized):  # a smaller layer: measured as that layer, from an input of its own width
            return self.cost(form.primitives(spec)[0], Dense())
        if not self.measure_more_work and more_work_than_dense(spec, form):
            self.estimated.add((spec, form))
            return self._timed(spec, Dense(), counted=False) * work_over_dense(spec, form)
        return self._timed(spec, form)

    def _timed(self, spec: LayerSpec, form: Form, counted: bool = True) -> float:
        """The measured price of one form of a single-call layer: from the table, else measured now (and rechecked
        against its peers). ``counted``: a table hit counts as a price read from the table."""
        options = {k: v for k, v in self.measure_options().items() if k != "cache_dir"}
        key = table_key(spec, form, options)
        value = self.table.get(key, counted=counted)
        fresh = value is None
        if fresh:
            value = self._checked(spec, form, self.measure(spec, form))  # a NaN never reaches the table
            self.measurements += 1
            self.table.put(key, value)
        layer = json.dumps({"spec": spec.with_(tied=False).to_dict(), **options}, sort_keys=True)
        peers = self._known.setdefault((layer, structure(spec, form)), {})
        known = peers.setdefault(key, Known(key, form, form_flops(spec, form), value))
        if fresh and self.recheck_factor:
            self.recheck(spec, known, list(peers.values()))
        return known.value

    def costs(self, spec: LayerSpec, forms: Sequence[Form]) -> torch.Tensor:
        """As :meth:`CostModel.costs`, read after all are measured: a later measurement may correct an earlier one."""
        if spec.calls != 1:
            return spec.calls * self.costs(spec.with_(calls=1), forms)
        super().costs(spec, forms)
        self.table.flush()
        return torch.tensor([self._cache[(spec, form)] for form in forms], dtype=torch.float64)

    def recheck(self, spec: LayerSpec, new: Known, peers: list[Known]) -> None:
        """Measure again whichever of ``new`` and a comparable peer looks slowed down; keep the fastest.

        Each entry is measured again at most :attr:`recheck_attempts` times in
        all, so a device with a genuine staircase costs a few measurements more,
        not one per pair.
        """
        assert self.recheck_factor is not None
        for peer in peers:
            if peer is new:
                continue
            slow = suspect(new, peer, self.recheck_factor)
            while slow is not None and slow.rechecked < self.recheck_attempts:
                again = float(self.measure(spec, slow.form))
                slow.rechecked += 1
                self.remeasured += 1
                if again < slow.value:
                    slow.value = again
                    self.table.put(slow.key, again)
                    if (spec, slow.form) in self._cache:
                        self._cache[(spec, slow.form)] = again
                slow = suspect(new, peer, self.recheck_factor)
            if slow is not None and not slow.reported:
                slow.reported = True
                log.info("%s: %s of the %s %d→%d layer stays out of line with %s after %d more measurements; "
                         "kept as measured", self.name, slow.form.describe(), spec.kind, spec.in_channels,
                         spec.out_channels, (peer if slow is new else new).form.describe(), slow.rechecked)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

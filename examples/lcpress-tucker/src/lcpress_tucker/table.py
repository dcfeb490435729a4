"""A latency table measured offline on a device, and interpolation inside it.

The CSV has one row per measured *primitive layer* (a Linear, or a Conv2d of
one kernel/stride/padding/dilation) — the unit every lcpress form is made of,
so one table prices dense layers, low-rank pairs and Tucker-2 triples alike::

    device,kind,in_channels,out_channels,kernel,stride,padding,dilation,groups,batch,height,width,latency_ms
    pi4,conv2d,32,64,3x3,1x1,1x1,1x1,1,1,8,8,0.412

``kernel``/``stride``/``padding``/``dilation`` are ``HxW``; a Linear row has
``1x1,1x1,0x0,1x1``, ``height`` and ``width`` 1, and ``batch`` = the number
of rows it multiplies (batch × sequence …). ``device`` is optional. Lines
starting with ``#`` are comments (where, how and when it was measured).

Rows that agree on everything but the channel counts form a grid in
(in_channels, out_channels). A query inside the grid is interpolated
bilinearly from the four measured corners around it — exact for compute that
scales with in × out, as a layer's multiply–accumulates do. A query outside
the measured range, on a configuration never measured, or with a corner
missing is refused: the table says what it knows, never more.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from lcpress import LayerSpec, LcpressError

REQUIRED = ("kind", "in_channels", "out_channels", "kernel", "stride", "padding", "dilation", "groups", "batch",
            "height", "width", "latency_ms")


class TableError(LcpressError, ValueError):
    """The table cannot be read, or cannot price a layer without guessing."""


@dataclass(frozen=True)
class Setting:
    """Everything about a primitive except its channel counts (matched exactly)."""

    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    batch: int
    height: int
    width: int

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear with {self.batch} rows"
        pair = lambda p: f"{p[0]}x{p[1]}"  # noqa: E731
        return (f"conv2d {pair(self.kernel)} stride {pair(self.stride)} padding {pair(self.padding)} "
                f"dilation {pair(self.dilation)} groups {self.groups}, batch {self.batch}, input {self.height}x{self.width}")


def setting_of(spec: LayerSpec, batch_size: int | None = None) -> Setting:
    """The table setting of a primitive layer, at ``batch_size`` if given (else its traced batch)."""
    if spec.kind not in ("linear", "conv2d"):
        raise TableError(f"a latency table holds Linear and Conv2d layers; it has no rows for {spec.kind!r} "
                         f"layers (the attention core of pruned heads): price that with cpu_latency or flops")
    if spec.kind == "linear":
        rows = math.prod(spec.input_shape[:-1])
        if batch_size is not None:
            rows = rows // spec.input_shape[0] * batch_size
        return Setting("linear", (1, 1), (1, 1), (0, 0), (1, 1), spec.groups, rows, 1, 1)
    batch = batch_size if batch_size is not None else spec.input_shape[0]
    return Setting("conv2d", tuple(spec.kernel_size), tuple(spec.stride), tuple(spec.padding), tuple(spec.dilation),
                   spec.groups, batch, spec.input_shape[2], spec.input_shape[3])


@dataclass
class LatencyTable:
    """Measured latencies (ms) of one device, by setting and (in_channels, out_channels)."""

    source: str
    device: str
    grids: dict[Setting, dict[tuple[int, int], float]] = field(default_factory=dict)

    def latency(self, setting: Setting, in_channels: int, out_channels: int) -> float:
        """Measured or bilinearly interpolated latency; :class:`TableError` rather than a guess."""
        grid = self.grids.get(setting)
        if grid is None:
            raise TableError(
                f"csv_latency: the table {self.source} (device {self.device!r}) has no measurement of a "
                f"{setting.describe()}; measure that configuration on the device and add its rows "
                f"(tools/measure_table.py), or price this layer with another cost model"
            )
        ins = sorted({i for i, _ in grid})
        outs = sorted({o for _, o in grid})
        i0, i1 = self._bracket(ins, in_channels, "in_channels", setting)
        o0, o1 = self._bracket(outs, out_channels, "out_channels", setting)
        corners = [(i0, o0), (i0, o1), (i1, o0), (i1, o1)]
        missing = [c for c in dict.fromkeys(corners) if c not in grid]
        if missing:
            raise TableError(
                f"csv_latency: {setting.describe()} with {in_channels}→{out_channels} channels lies between "
                f"measured points, but (in, out) = {', '.join(map(str, missing))} was not measured; add "
                f"the missing rows so the table has all four corners around it"
            )
        ti = 0.0 if i1 == i0 else (in_channels - i0) / (i1 - i0)
        to = 0.0 if o1 == o0 else (out_channels - o0) / (o1 - o0)
        low = grid[(i0, o0)] * (1 - to) + grid[(i0, o1)] * to
        high = grid[(i1, o0)] * (1 - to) + grid[(i1, o1)] * to
        return low * (1 - ti) + high * ti

    def _bracket(self, values: list[int], x: int, what: str, setting: Setting) -> tuple[int, int]:
        if x < values[0] or x > values[-1]:
            raise TableError(
                f"csv_latency: {what} = {x} is outside the measured range {values[0]}–{values[-1]} for a "
                f"{setting.describe()} in {self.source}; csv_latency interpolates only between measured points "
                f"and never extrapolates: measure {what} = {x} (or beyond) on the device and add the rows"
            )
        k = bisect.bisect_left(values, x)
        if values[k] == x:
            return x, x
        return values[k - 1], values[k]


def read_table(path: str | Path, device: str | None = None) -> LatencyTable:
    """Parse a latency CSV (see the module docstring); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"csv_latency: latency table {str(path)!r} does not exist")
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise TableError(f"csv_latency: {path}: missing column(s) {', '.join(missing)}; "
                         f"the header must hold {', '.join(REQUIRED)} (and optionally device)")
    rows: dict[str, dict[Setting, dict[tuple[int, int], float]]] = {}
    for number, row in enumerate(reader, start=2):
        where = f"{path}, data row {number - 1}"
        setting, channels, latency = _parse_row(row, where)
        rows.setdefault((row.get("device") or "").strip(), {}).setdefault(setting, {})[channels] = latency
    if not rows:
        raise TableError(f"csv_latency: {path} holds no measurements")
    if device is None:
        if len(rows) > 1:
            raise TableError(f"csv_latency: {path} holds several devices ({', '.join(sorted(rows))}); "
                             f"choose one with the 'device' option")
        device = next(iter(rows))
    if device not in rows:
        raise TableError(f"csv_latency: {path} has no rows for device {device!r}; it holds {', '.join(sorted(rows))}")
    return LatencyTable(str(path), device, rows[device])


def _parse_row(row: dict[str, str], where: str) -> tuple[Setting, tuple[int, int], float]:
    try:
        kind = row["kind"].strip()
        if kind not in ("linear", "conv2d"):
            raise ValueError(f"kind must be linear or conv2d, got {kind!r}")
        pairs = {k: _pair(row[k]) for k in ("kernel", "stride", "padding", "dilation")}
        ints = {k: int(row[k]) for k in ("in_channels", "out_channels", "groups", "batch", "height", "width")}
        latency = float(row["latency_ms"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise TableError(f"csv_latency: {where}: {exc}") from None
    if not (math.isfinite(latency) and latency >= 0):
        raise TableError(f"csv_latency: {where}: latency_ms must be a finite, non-negative number, got {latency}")
    if min(ints.values()) < 1:
        raise TableError(f"csv_latency: {where}: channel counts, groups, batch, height and width must be positive")
    setting = Setting(kind, pairs["kernel"], pairs["stride"], pairs["padding"], pairs["dilation"], ints["groups"],
                      ints["batch"], ints["height"], ints["width"])
    return setting, (ints["in_channels"], ints["out_channels"]), latency


def _pair(text: str) -> tuple[int, int]:
    parts = text.strip().lower().split("x")
    if len(parts) != 2:
        raise ValueError(f"expected HxW (e.g. 3x3), got {text!r}")
    return int(parts[0]), int(parts[1])

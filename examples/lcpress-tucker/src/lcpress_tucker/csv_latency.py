"""The ``csv_latency`` cost model: latency from a table measured offline on the target device.

The way a phone or accelerator vendor supplies numbers: they run
``tools/measure_table.py`` (or their own harness) on the device, ship the CSV,
and lcpress compresses for that device without ever touching it. A form's
latency is the sum over the primitive layers it executes (each looked up or
interpolated in the table, see :mod:`lcpress_tucker.table`), times the number
of calls of the layer. Layers the table does not cover are refused with a
message naming the configuration to measure — never extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lcpress import CostModel, Form, LayerSpec, Options, option

from .table import LatencyTable, TableError, read_table, setting_of

EXAMPLE_TABLE = "example_latency.csv"


def example_table() -> Path:
    """The example table shipped with this package (see the comment lines at its top)."""
    return Path(str(resources.files("lcpress_tucker") / "data" / EXAMPLE_TABLE))


@dataclass
class CsvLatencyOptions(Options):
    table: str | None = option(None, help="CSV of latencies measured on the target device "
                                          "(default: the example table shipped with lcpress-tucker)")
    device: str | None = option(None, help="whose rows to use, when the table holds several devices")
    batch_size: int | None = option(None, help="price layers at this batch size (default: the traced example's)",
                                    ge=1)


class CsvLatency(CostModel):
    """Milliseconds per forward pass, read from a device's measured latency table."""

    name = "csv_latency"
    unit = "ms"
    Options = CsvLatencyOptions
    options: CsvLatencyOptions

    def __init__(self, options: CsvLatencyOptions | None = None) -> None:
        super().__init__(options)
        self._table: LatencyTable | None = None

    @property
    def table(self) -> LatencyTable:
        if self._table is None:
            self._table = read_table(self.options.table or example_table(), self.options.device)
        return self._table

    def unavailable_reason(self) -> str | None:
        try:
            self.table
        except TableError as exc:
            return str(exc)
        return None

    def cost(self, spec: LayerSpec, form: Form) -> float:
        total = 0.0
        for primitive in form.primitives(spec):
            setting = setting_of(primitive, self.options.batch_size)
            total += self.table.latency(setting, primitive.in_channels, primitive.out_channels)
        return total * spec.calls

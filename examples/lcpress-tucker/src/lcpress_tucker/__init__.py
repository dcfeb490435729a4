"""lcpress-tucker: a third-party lcpress plugin package.

* scheme ``tucker2`` — Tucker-2 decomposition of Conv2d weights, with rank
  selection by lcpress's core (:mod:`lcpress_tucker.scheme`);
* cost model ``csv_latency`` — latency read from a table measured offline on
  the target device, interpolated only between measured points
  (:mod:`lcpress_tucker.csv_latency`);
* module ``Tucker2Conv2d`` — the scheme's optional one-module realization,
  allow-listed for pickle-free loading (:mod:`lcpress_tucker.module`);
* command ``lcpress tucker-table FILE`` — checks a latency table.

All are registered through the ``lcpress`` entry point
(:mod:`lcpress_tucker.plugin`); nothing here needs to be imported by hand.
"""

from .csv_latency import CsvLatency, CsvLatencyOptions, example_table
from .module import Tucker2Conv2d
from .scheme import Tucker2, Tucker2Options, Tucker2Scheme, tucker2_conv, tucker2_module
from .table import LatencyTable, TableError, read_table

__version__ = "0.2.0"
__all__ = ["Tucker2Scheme", "Tucker2Options", "Tucker2", "tucker2_conv", "tucker2_module", "Tucker2Conv2d", "CsvLatency", "CsvLatencyOptions",
           "LatencyTable", "TableError", "read_table", "example_table"]

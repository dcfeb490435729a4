"""Measured forward latency on this CPU — compress for the machine you deploy on.

The cost of a layer in a form is the median forward time of the realized
primitives (dense, two thin layers, grouped …) built at the layer's traced
input shape, timed with ``torch.utils.benchmark`` with the thread count set
explicitly (its Timer defaults to one thread). Measurements persist per CPU
(model, threads, torch version) in the cost-table cache, so a second run —
or a sweep — measures nothing again.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch.utils import benchmark

import lcpress
from lcpress import Dense, Form, LayerSpec, MeasuredCostModel, Options, form_module, option, timing_input


log = logging.getLogger("lcpress.cpu_latency")

#: The most seconds one measurement may take, as a multiple of its ``min_run_time`` (``max_run_time``'s default).
RUN_TIME_CAP = 20


@dataclass
class CpuLatencyOptions(Options):
    batch_size: int | None = option(None, help="batch size to time at (default: the traced example's)", ge=1)
    batch_sizes: list[int] = option(
        default_factory=list, help="time every form at each of these batch sizes and price it by its time per example "
                                   "summed over them (ms), so the model is kept fast at all of them, e.g. [1, 32]; "
                                   "instead of batch_size")
    threads: int | None = option(None, help="CPU threads (default: torch.get_num_threads())", ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", help="data type of weights and input")
    min_run_time: float = option(0.2, help="seconds of timing per measurement (adaptive_autorange)", gt=0)
    max_run_time: float | None = option(
        None, help="the most seconds one measurement may take while its timings stay noisy (default: "
                   "20 × min_run_time; torch's own default of 10 s per measurement makes a loaded machine "
                   "spend minutes on a table)", gt=0)
    working_set_mb: float | Literal["auto"] = option(
        0.0, help="cycle weight copies totalling this many MB so every timed call reads its weights as inside a "
                  "model of that size (between two whole numbers of copies the latency is interpolated; 0: time the "
                  "layer cache-hot; auto: the weights of the model being compressed, embedding tables left out, "
                  "as they are read a few rows at a time)", ge=0)
    clock: Literal["wall", "thread"] = option(
        "wall", help="wall: elapsed time; thread: CPU time of the timing thread, which with threads: 1 runs every op, "
                     "so time the OS gives other processes on a shared machine is not counted")
    cache_dir: str | None = option(None, help="where cost tables live (default: $LCPRESS_CACHE_DIR or ~/.cache/lcpress)")

    def validate(self) -> None:
        if self.clock == "thread" and self.threads != 1:
            self.fail("clock", "the thread clock counts the calling thread only: set threads: 1 with it")
        if self.batch_sizes and self.batch_size is not None:
            self.fail("batch_sizes", "give batch_size (one batch size) or batch_sizes (several), not both")
        if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in self.batch_sizes):
            self.fail("batch_sizes", f"batch sizes are whole numbers ≥ 1, got {self.batch_sizes}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            self.fail("batch_sizes", f"each batch size once, got {self.batch_sizes}")


#: The most timing blocks one measurement takes. adaptive_autorange re-summarises every block so far after each
#: one; when its block-size estimate comes out tiny (a busy machine during its warm-up), blocks of microseconds
#: pile up to max_run_time and that re-summarising grows quadratic: a 64-wide model's timing once ran ten minutes.
MAX_BLOCKS = 2000


class _Enough(Exception):
    """Raised from adaptive_autorange's callback to end a measurement at MAX_BLOCKS."""


def median_seconds(timer: benchmark.Timer, run_times: dict[str, float]) -> float:
    """Median seconds per run of ``timer`` by ``adaptive_autorange``, at most :data:`MAX_BLOCKS` blocks."""
    blocks: list[float] = []

    def count(number: int, seconds: float) -> None:
        blocks.append(seconds / number)
        if len(blocks) >= MAX_BLOCKS:
            raise _Enough

    try:
        return timer.adaptive_autorange(callback=count, **run_times).median
    except _Enough:
        return float(torch.tensor(blocks).median())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuLatency(MeasuredCostModel):
    """Median forward latency in milliseconds on this CPU.

    With ``batch_sizes``, a form costs its time per example at each batch size, summed. A layer's forms rank
    differently at different batch sizes: a rank on a fast kernel staircase at batch 32 can be slow at batch 1,
    and a model chosen by batch-32 prices then misses a batch-1 latency it must also meet. Each batch size is
    measured, cached and checked for interference as a ``batch_size`` run of its own would be (the same table
    entries), so only the sum is new.
    """

    name = "cpu_latency"
    unit = "ms"
    Options = CpuLatencyOptions
    options: CpuLatencyOptions

    def __init__(self, options: CpuLatencyOptions | None = None) -> None:
        super().__init__(options)
        self._at_batch: dict[int, CpuLatency] = {}

    def for_layers(self, specs: Mapping[str, LayerSpec]) -> None:
        """``working_set_mb: auto`` becomes the MB of weights the model's forward reads (see :func:`weight_mb`)."""
        if self.options.working_set_mb == "auto":
            self.options = dataclasses.replace(self.options, working_set_mb=weight_mb(specs, self.options.dtype))
            self._at_batch.clear()  # one-batch instances copy the options
            log.info("cpu_latency: working_set_mb: auto = %g MB, the model's weights (embedding tables left out)",
                     self.options.working_set_mb)

    def measure_options(self) -> dict[str, Any]:
        """As the base's, without ``batch_sizes``: only single-batch measurements reach the table."""
        return {k: v for k, v in super().measure_options().items() if k != "batch_sizes"}

    def at_batch(self, batch_size: int) -> CpuLatency:
        """This cost model timing at one batch size, sharing this one's cost table."""
        single = self._at_batch.get(batch_size)
        if single is None:
            single = type(self)(dataclasses.replace(self.options, batch_size=batch_size, batch_sizes=[]))
            single._table = self.table
            self._at_batch[batch_size] = single
        return single

    def cost(self, spec: LayerSpec, form: Form) -> float:
        if not self.options.batch_sizes:
            return super().cost(spec, form)
        return float(self.costs(spec, [form])[0])

    def costs(self, spec: LayerSpec, forms: Sequence[Form]) -> torch.Tensor:
        """Per batch size after all its forms are measured (a recheck may correct an earlier one), then summed."""
        if not self.options.batch_sizes:
            return super().costs(spec, forms)
        total = sum(self.at_batch(b).costs(spec, forms) / b for b in self.options.batch_sizes)
        self.measurements = sum(m.measurements for m in self._at_batch.values())
        self.remeasured = sum(m.remeasured for m in self._at_batch.values())
        self.estimated = set().union(*(m.estimated for m in self._at_batch.values()))
        return total

    @property
    def threads(self) -> int:
        return self.options.threads or torch.get_num_threads()

    def fingerprint(self) -> dict[str, Any]:
        return {"cpu": cpu_model(), "machine": platform.machine(), "threads": self.threads,
                "torch": torch.__version__}

    def measure(self, spec: LayerSpec, form: Form) -> float:
        if self.options.batch_sizes:
            return sum(self.at_batch(b).measure(spec, form) / b for b in self.options.batch_sizes)
        dtype = self.torch_dtype(self.options.dtype)
        module = form_module(spec, form).to(dtype).eval()
        x = timing_input(spec, self.options.batch_size, dtype)
        ratio = self._working_set_ratio(module)
        low, high = max(1, math.floor(ratio)), max(1, math.ceil(ratio))
        at_low = self._time(module, x, low)
        if high == low:
            return at_low
        # the working set falls between two whole numbers of copies: interpolate the latency between them
        return at_low + (ratio - low) * (self._time(module, x, high) - at_low)

    def measure_model(self, model: torch.nn.Module, example_input: Any) -> float | None:
        """Median ms of a whole forward pass, at ``batch_size`` (the example repeated), this model's threads and
        its ``dtype`` (a copy of the model converted to it, as the layer table was measured); with
        ``batch_sizes``, the time per example at each, summed, as the layers are priced."""
        if not isinstance(example_input, torch.Tensor):
            return None
        if self.options.batch_sizes:
            times = [self.at_batch(b).measure_model(model, example_input) for b in self.options.batch_sizes]
            return sum(t / b for t, b in zip(times, self.options.batch_sizes))  # type: ignore[operator]
        x = example_input
        if self.options.batch_size is not None:
            x = x[:1].expand(self.options.batch_size, *x.shape[1:]).contiguous()
        dtype = self.torch_dtype(self.options.dtype)
        if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
            x = x.to(dtype) if x.is_floating_point() else x
        timer = benchmark.Timer("model(x)", globals={"model": model.eval(), "x": x}, num_threads=self.threads,
                                timer=self._clock)
        with torch.no_grad():
            return median_seconds(timer, self._run_times) * 1e3

    def _time(self, module: torch.nn.Module, x: torch.Tensor, copies: int) -> float:
        """Median ms per call while cycling ``copies`` copies of the weights (1 = cache-hot)."""
        modules = [module] + [copy.deepcopy(module) for _ in range(copies - 1)]
        timer = benchmark.Timer("for m in modules: m(x)", globals={"modules": modules, "x": x}, num_threads=self.threads,
                                timer=self._clock)
        with torch.no_grad():
            return median_seconds(timer, self._run_times) * 1e3 / copies

    @property
    def _run_times(self) -> dict[str, float]:
        """adaptive_autorange's time limits: at least min_run_time, at most max_run_time, however noisy."""
        low = self.options.min_run_time
        high = self.options.max_run_time if self.options.max_run_time is not None else RUN_TIME_CAP * low
        return {"min_run_time": low, "max_run_time": max(low, high)}

    @property
    def _clock(self) -> Any:
        return time.thread_time if self.options.clock == "thread" else time.perf_counter

    def _working_set_ratio(self, module: torch.nn.Module) -> float:
        """The configured working set in copies of the layer's weights (1 = cache-hot), at most 256."""
        if self.options.working_set_mb == "auto":
            raise lcpress.LcpressError(
                "cpu_latency: working_set_mb: auto is the weight size of the model being compressed, known once a "
                "run plans it; outside a run, call for_layers(specs) first or give the MB")
        weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        if not self.options.working_set_mb or not weight_bytes:
            return 1.0
        return max(1.0, min(256.0, self.options.working_set_mb * 2**20 / weight_bytes))


def weight_mb(specs: Mapping[str, LayerSpec], dtype: str = "float32") -> float:
    """MB of the weights a forward pass reads in full: every layer's, once (a tied layer's with the layer it is
    tied to), embedding tables left out (a lookup reads a few rows), at ``dtype``'s width."""
    numbers = sum(Dense().param_count(spec) for spec in specs.values() if spec.kind != "embedding")
    return round(numbers * torch.finfo(MeasuredCostModel.torch_dtype(dtype)).bits / 8 / 2**20, 3)


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(CpuLatency)

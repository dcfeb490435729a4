"""Measured forward latency on an NVIDIA GPU, with CUDA events.

Warm-up runs, then the median of repeated timings between CUDA events on the
current stream. Tables are kept per GPU (UUID, driver, SM clock, torch). On a
machine without CUDA the model lists as unavailable and refuses, with the
reason, to be used — it never breaks import or the CPU test suite.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any, Literal

import torch

import lcpress
from lcpress import Form, LayerSpec, MeasuredCostModel, Options, form_module, option, timing_input


@dataclass
class GpuOptions(Options):
    device: int = option(0, help="CUDA device index", ge=0)
    batch_size: int | None = option(None, help="batch size to time at (default: the traced example's)", ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", help="data type of weights and input")
    warmup: int = option(10, help="untimed runs before measuring", ge=0)
    repeats: int = option(50, help="timed runs; the median is the cost", ge=1)
    cache_dir: str | None = option(None, help="where cost tables live (default: $LCPRESS_CACHE_DIR or ~/.cache/lcpress)")


def cuda_unavailable(device: int) -> str | None:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (CPU-only build or no GPU)"
    if device >= torch.cuda.device_count():
        return f"CUDA device {device} does not exist ({torch.cuda.device_count()} visible)"
    return None


def gpu_fingerprint(device: int) -> dict[str, Any]:
    """UUID, name, driver and SM clock of the GPU (NVML where available)."""
    props = torch.cuda.get_device_properties(device)
    info: dict[str, Any] = {"uuid": str(getattr(props, "uuid", "")), "name": props.name, "torch": torch.__version__,
                            "cuda": torch.version.cuda}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        info["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
    except Exception:  # NVML missing: the UUID still pins the device
        info["driver"] = "unknown"
    return info


def module_and_input(spec: LayerSpec, form: Form, options: GpuOptions):
    dtype = MeasuredCostModel.torch_dtype(options.dtype)
    device = torch.device("cuda", options.device)
    module = form_module(spec, form).to(device=device, dtype=dtype).eval()
    return module, timing_input(spec, options.batch_size, dtype, device)


class GpuLatency(MeasuredCostModel):
    """Median forward latency in milliseconds on one CUDA device."""

    name = "gpu_latency"
    unit = "ms"
    Options = GpuOptions
    options: GpuOptions

    def unavailable_reason(self) -> str | None:
        return cuda_unavailable(self.options.device)

    def fingerprint(self) -> dict[str, Any]:
        return gpu_fingerprint(self.options.device)

    def measure_model(self, model: torch.nn.Module, example_input: Any) -> float | None:
        """Median ms of a whole forward pass on the GPU, at ``batch_size`` (the example repeated)."""
        if not isinstance(example_input, torch.Tensor) or self.unavailable_reason():
            return None
        device = torch.device("cuda", self.options.device)
        x = example_input.to(device)
        if self.options.batch_size is not None:
            x = x[:1].expand(self.options.batch_size, *x.shape[1:]).contiguous()
        return _median_ms(copy.deepcopy(model).to(device).eval(), x, self.options)  # the caller's model stays put

    def measure(self, spec: LayerSpec, form: Form) -> float:
        module, x = module_and_input(spec, form, self.options)
        return _median_ms(module, x, self.options)


def _median_ms(module: torch.nn.Module, x: torch.Tensor, options: GpuOptions) -> float:
    """Median CUDA-event time of ``module(x)`` after warm-up."""
    times = []
    with torch.no_grad(), torch.cuda.device(options.device):
        for _ in range(options.warmup):
            module(x)
        for _ in range(options.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            module(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(GpuLatency)

"""Measured energy per forward pass on an NVIDIA GPU, from NVML's energy counter.

``nvmlDeviceGetTotalEnergyConsumption`` counts millijoules since the driver
loaded and updates only every few tens of milliseconds, so one forward pass is
far below its resolution. The forward is repeated until at least
``min_seconds`` have passed (many counter updates), and the energy difference
is divided by the number of passes. Without CUDA or NVML the model is listed
as unavailable, with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

import lcpress
from lcpress import Form, LayerSpec, MeasuredCostModel, option

from .gpu_latency import GpuOptions, cuda_unavailable, gpu_fingerprint, module_and_input


@dataclass
class GpuEnergyOptions(GpuOptions):
    min_seconds: float = option(1.0, help="repeat the forward at least this long per measurement", gt=0)


def nvml_unavailable(device: int) -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:
        return f"NVML cannot read the GPU's energy counter ({type(exc).__name__}: {exc})"
    return None


class GpuEnergy(MeasuredCostModel):
    """Joules per forward pass on one CUDA device."""

    name = "gpu_energy"
    unit = "J"
    Options = GpuEnergyOptions
    options: GpuEnergyOptions

    def unavailable_reason(self) -> str | None:
        return cuda_unavailable(self.options.device) or nvml_unavailable(self.options.device)

    def fingerprint(self) -> dict[str, Any]:
        return gpu_fingerprint(self.options.device)

    def measure(self, spec: LayerSpec, form: Form) -> float:
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(self.options.device)
        module, x = module_and_input(spec, form, self.options)
        with torch.no_grad(), torch.cuda.device(self.options.device):
            for _ in range(self.options.warmup):
                module(x)
            torch.cuda.synchronize()
            start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            start, passes = time.perf_counter(), 0
            while time.perf_counter() - start < self.options.min_seconds:
                for _ in range(10):
                    module(x)
                passes += 10
                torch.cuda.synchronize()
            end_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return (end_mj - start_mj) / 1000.0 / passes


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(GpuEnergy)

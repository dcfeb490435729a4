"""One line describing the machine a benchmark ran on (CPU model, threads, torch)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"

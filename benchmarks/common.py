"""What every benchmark script shares: the machine line, publishing a table, fine-tuning."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from lcpress.config import TrainConfig
from lcpress.costmodels.cpu_latency import cpu_model
from lcpress.engine import LStep
from lcpress.training import SupervisedTrainer


def describe() -> str:
    """CPU model, torch threads, torch and Python versions."""
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def publish(title: str, preamble: str, lines: list[str], out: str, quick: bool, summary: str = "") -> None:
    """Print the table; outside quick mode, also write it as markdown to ``out``."""
    text = "\n".join([f"# {title}", "", preamble, "", *lines, "", *([summary, ""] if summary else [])])
    print(text)
    if not quick:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


def fine_tune(model: torch.nn.Module, train, steps: int, cfg: TrainConfig) -> None:
    """The optimizer, epochs and learning-rate decay of lcpress's L steps, without the penalty."""
    trainer = SupervisedTrainer(train, cfg, progress=False)
    for k in range(steps):
        trainer(model, lambda: torch.zeros(()), LStep(k, 0.0, steps))

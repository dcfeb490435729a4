"""Resumable LC checkpoints: the engine's whole state in one file, replaced atomically after every step.

The engine's :meth:`~lcpress.core.engine.LCEngine.snapshot` (model, θ, λ,
step, history, trainer and RNG states) is written, with the run's config,
as one pickle-free safetensors file (:mod:`lcpress.io.files`); a resumed run
continues bit for bit from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lcpress.errors import RunDirectoryError
from lcpress.io.files import read_file, write_file

CHECKPOINT_FORMAT = "lcpress-checkpoint"


class FileCheckpointer:
    """The engine's checkpointer: one file, replaced atomically after every step."""

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config = config

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        write_file(self.path, tensors, {"format": CHECKPOINT_FORMAT, "config": self.config, "engine": meta})

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = read_file(self.path, what="checkpoint")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise RunDirectoryError(f"{str(self.path)!r} is not an lcpress checkpoint")
        return tensors, meta

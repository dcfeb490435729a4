"""Run directories and resumable LC checkpoints.

A run directory holds ``checkpoint.safetensors`` (rewritten atomically after
every LC step), ``history.csv``, the report, and, once finished,
``model.safetensors`` and ``run.json`` with ``"status": "finished"``.

:class:`RunDirectory` guards against losing work: a directory holding a
finished run is never reused without ``force``, and one holding an unfinished
run must be resumed or explicitly discarded with ``force``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import RunDirectoryError
from .storage import read_file, replacing, write_file

CHECKPOINT = "checkpoint.safetensors"
RUN_INFO = "run.json"
#: Files `lcpress report` writes into a run directory.
REPORT_FILES = ("report.md", "report.html", "report.csv", "report-ranks.png", "report-costs.png", "report-lc.png")


class RunDirectory:
    """One run's files, and the rules that keep earlier work safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def file(self, name: str) -> Path:
        return self.path / name

    def info(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / RUN_INFO).read_text())
        except (OSError, ValueError):
            return {}

    def finished(self) -> bool:
        return self.info().get("status") == "finished"

    def prepare(self, *, resume: bool, force: bool, config: dict[str, Any]) -> bool:
        """Make the directory ready; returns True when a checkpoint should be resumed."""
        has_checkpoint = self.checkpoint_path.exists()
        if resume:
            if not has_checkpoint:
                raise RunDirectoryError(f"--resume: {str(self.path)!r} holds no checkpoint to resume from")
            if self.finished() and not force:
                raise RunDirectoryError(f"{str(self.path)!r} holds a finished run; nothing to resume (use --force to redo it)")
            return True
        if (has_checkpoint or self.finished()) and not force:
            what = "a finished run" if self.finished() else "an unfinished run"
            raise RunDirectoryError(
                f"{str(self.path)!r} holds {what}; use --resume to continue it, --force to replace it, "
                f"or choose another output_dir"
            )
        if force and self.path.exists():
            for name in (CHECKPOINT, RUN_INFO, "model.safetensors", "history.csv", "layers.csv", *REPORT_FILES):
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_info({"status": "running", "config": config})
        return False

    def write_info(self, info: dict[str, Any]) -> None:
        write_text_atomic(self.path / RUN_INFO, json.dumps(info, indent=2, default=str))

    def update_info(self, **extra: Any) -> None:
        """Add or replace entries of ``run.json``."""
        info = self.info()
        info.update(extra)
        self.write_info(info)

    def mark_finished(self, **extra: Any) -> None:
        self.update_info(**extra, status="finished")


class FileCheckpointer:
    """The engine's checkpointer: one file, replaced atomically after every step."""

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config = config

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        write_file(self.path, tensors, {"format": "lcpress-checkpoint", "config": self.config, "engine": meta})

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = read_file(self.path, what="checkpoint")
        if meta.get("format") != "lcpress-checkpoint":
            raise RunDirectoryError(f"{str(self.path)!r} is not an lcpress checkpoint")
        return tensors, meta


def write_text_atomic(path: Path, text: str) -> None:
    with replacing(Path(path)) as tmp:
        tmp.write_text(text)


"""Run directories: the files of one run, and the rules that keep earlier work safe.

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

from lcpress.atomic import write_text_atomic
from lcpress.errors import RunDirectoryError

CHECKPOINT = "checkpoint.safetensors"
RUN_INFO = "run.json"
MODEL_FILE = "model.safetensors"
#: Files `lcpress report` writes into a run directory.
REPORT_FILES = ("report.md", "report.html", "report.csv", "report-ranks.png", "report-forms.png", "report-costs.png",
                "report-lc.png")
#: Every file a run writes into its directory (and the only ones --force removes).
RUN_FILES = (CHECKPOINT, RUN_INFO, MODEL_FILE, "history.csv", "layers.csv", *REPORT_FILES)


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
            info = json.loads((self.path / RUN_INFO).read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

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
            for name in RUN_FILES:
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

"""Run directories: the files of one run, and the rules that keep earlier work safe.

A run directory holds ``run.json`` (the config, the status, and what the run
recorded), ``checkpoint.safetensors`` (rewritten atomically after every LC
step), ``history.csv``, the report, and, once finished, ``layers.csv`` and
``model.safetensors``.

The rules, as git and databases keep them:

* **A folder lcpress did not create is not written into** unless asked with
  ``force``; even then, a file there that lcpress would write (a
  ``history.csv`` of the user's own) is never replaced.
* **Earlier work is kept**: a finished run is not redone, and an unfinished
  one is resumed or explicitly replaced (``force`` removes only the files
  lcpress writes, never others).
* **One run at a time**: a run holds ``run.lock`` (pid, host, start) while it
  writes; a second run or resume of the same directory stops with an error
  naming the holder. A lock left by a process that no longer exists on this
  host is taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from lcpress.atomic import write_text_atomic
from lcpress.errors import CheckpointError, RunDirectoryError, listed
from lcpress.io.files import read_file

log = logging.getLogger("lcpress.rundir")

RUN_FORMAT = "lcpress-run"
CHECKPOINT = "checkpoint.safetensors"
RUN_INFO = "run.json"
MODEL_FILE = "model.safetensors"
LOCK = "run.lock"
#: Files `lcpress report` writes into a run directory.
REPORT_FILES = ("report.md", "report.html", "report.csv", "report-ranks.png", "report-forms.png", "report-costs.png",
                "report-lc.png", "report-sensitivity.png")
#: Every file a run writes into its directory (and the only ones --force removes).
RUN_FILES = (CHECKPOINT, RUN_INFO, MODEL_FILE, "history.csv", "layers.csv", *REPORT_FILES)


class RunDirectory:
    """One run's files, and the rules that keep earlier work safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._made = False  # this process created the folder (for its lock)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def file(self, name: str) -> Path:
        return self.path / name

    def info(self) -> dict[str, Any]:
        """``run.json`` as a mapping; empty when there is none or it cannot be read (:meth:`damage` says why)."""
        return self._read_info()[0]

    def damage(self) -> str | None:
        """Why ``run.json`` exists but cannot be read as lcpress's record of a run, or None."""
        return self._read_info()[1]

    def _read_info(self) -> tuple[dict[str, Any], str | None]:
        """``run.json``'s mapping, and why it is unreadable when it exists but is not one."""
        path = self.path / RUN_INFO
        if not path.is_file():
            return {}, None
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return {}, f"{type(exc).__name__}: {exc}"
        return (info, None) if isinstance(info, dict) else ({}, f"it holds a {type(info).__name__}, not a mapping")

    def finished(self) -> bool:
        return self.info().get("status") == "finished"

    def is_run(self) -> bool:
        """True when lcpress made this folder (a ``run.json`` of its own, also one written before 0.2)."""
        info = self.info()
        return info.get("format") == RUN_FORMAT or {"status", "config"} <= set(info)

    # ------------------------------------------------------------ preparing
    def prepare(self, *, resume: bool, force: bool, config: dict[str, Any], extend: bool = False) -> bool:
        """Make the directory ready; returns True when a checkpoint should be resumed."""
        resuming = self.check(resume=resume, force=force, extend=extend)
        self._remove_stale_temporaries()
        if resuming:
            return True
        if force and self.is_run():
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        self._make()
        self.write_info({"format": RUN_FORMAT, "status": "running", "config": config})
        return False

    def check(self, *, resume: bool, force: bool, extend: bool = False) -> bool:
        """Every refusal :meth:`prepare` would make, writing nothing; True when a checkpoint would be resumed.

        The CLI asks before it builds the model, so a run that cannot start says so before minutes of training.
        """
        self._check_place()
        holder = self._holder()
        if holder is not None and not _gone(holder) and not _ours(holder):  # said first: no resume or force may
            raise RunDirectoryError(_held_message(self.lock_path, holder))  # touch a folder a live run writes
        damage = self.damage()
        if damage:  # neither lcpress's record nor clearly someone else's: touch nothing
            raise RunDirectoryError(
                f"{str(self.path)!r} holds a run.json lcpress cannot read ({damage}), so the run there can be neither "
                f"resumed nor safely replaced; move the folder aside (a finished run's model.safetensors still loads "
                f"with lcpress.load; the checkpoint records the run's config) or choose another output_dir")
        if self.path.exists() and not self.is_run() and any(self._entries()):
            self._refuse_foreign(force)
        has_checkpoint = self.checkpoint_path.exists()
        if resume:
            if not has_checkpoint:
                raise RunDirectoryError(f"resume: {str(self.path)!r} holds no checkpoint to resume from; start the run "
                                        f"without resume=True (CLI: --resume), or name the output_dir it ran in")
            if self.finished() and not (force or extend):
                damage = self._model_damage()
                if damage is None:
                    raise RunDirectoryError(f"{str(self.path)!r} holds a finished run; nothing to resume (extend=True "
                                            f"with more schedule.steps continues it, CLI: --extend; force=True redoes "
                                            f"it, CLI: --force)")
                log.warning("%s: the finished run's %s %s; it is realized again from the checkpoint", self.path,
                            MODEL_FILE, damage)
            return True
        if (has_checkpoint or self.finished()) and not force:
            go_on = ("resume=True, extend=True with more schedule.steps to continue it (CLI: --resume --extend)"
                     if self.finished() else "resume=True to continue it (CLI: --resume)")
            raise RunDirectoryError(
                f"{str(self.path)!r} holds {'a finished' if self.finished() else 'an unfinished'} run; pass {go_on}, "
                f"force=True to replace it (CLI: --force), or choose another output_dir"
            )
        return False

    def _model_damage(self) -> str | None:
        """Why the finished run's model file cannot be loaded (missing, cut short, altered), or None."""
        path = self.file(MODEL_FILE)
        if not path.is_file():
            return "is missing"
        try:
            read_file(path, what="model file")
        except CheckpointError as exc:
            return f"cannot be read ({exc})"
        return None

    def _remove_stale_temporaries(self) -> None:
        """Half-written copies of the run's files (``.checkpoint.safetensors.x1y2.tmp``) that a killed process
        left: the lock is held, so no one is writing them now, and each can be as large as a checkpoint."""
        if not self.is_run():
            return
        for name in RUN_FILES:
            for stale in self.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def _entries(self) -> Iterator[Path]:
        return (p for p in self.path.iterdir() if p.name != LOCK)

    def _check_place(self) -> None:
        """output_dir must be a folder (or not exist yet) that this user can write."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"output_dir {str(self.path)!r} is a file, not a folder; choose another output_dir")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise RunDirectoryError(f"output_dir {str(self.path)!r} lies under {str(parent)!r}, which is a "
                                            f"file; choose another output_dir")
                break

    def _make(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create output_dir {str(self.path)!r}: {exc.strerror or exc}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunDirectoryError(f"output_dir {str(self.path)!r} is not writable by this user; choose another "
                                    f"output_dir or change its permissions")

    def _refuse_foreign(self, force: bool) -> None:
        names = sorted(p.name for p in self._entries())
        clash = [n for n in RUN_FILES if (self.path / n).exists()]
        if clash and self.checkpoint_path.exists():  # lcpress's own run, its record lost
            raise RunDirectoryError(
                f"{str(self.path)!r} holds an lcpress run whose run.json is missing ({', '.join(clash)}), so the run "
                f"can be neither resumed nor safely replaced; its checkpoint records the run's config. Move the "
                f"folder aside, or choose another output_dir")
        if clash:  # said first: force would not help
            raise RunDirectoryError(
                f"{str(self.path)!r} holds {', '.join(clash)}, which lcpress did not write and a run would replace; "
                f"force=True (CLI: --force) never replaces files lcpress did not write: move them or choose another "
                f"output_dir")
        if not force:
            raise RunDirectoryError(
                f"{str(self.path)!r} is a folder lcpress did not create and it holds files ({listed(names, 5)}); "
                f"lcpress writes only into new folders or its own run folders. Choose another output_dir, or pass "
                f"force=True (CLI: --force) to add a run beside those files (none of them is ever replaced or "
                f"deleted)")

    # ------------------------------------------------------------- run.json
    def write_info(self, info: dict[str, Any]) -> None:
        write_text_atomic(self.path / RUN_INFO, json.dumps(info, indent=2, default=str))

    def update_info(self, **extra: Any) -> None:
        """Add or replace entries of ``run.json``."""
        info = self.info()
        info.update(extra)
        self.write_info(info)

    def mark_finished(self, **extra: Any) -> None:
        self.update_info(**extra, status="finished")

    # ---------------------------------------------------------------- lock
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def acquire(self) -> None:
        """Take ``run.lock``, or a :class:`RunDirectoryError` naming the run that holds it."""
        self._check_place()
        self._made = not self.path.exists()  # removed again on release if the run then refused to start
        self._make()
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _gone(holder):
                    self._take_over(holder)  # its process ended without releasing it
                    continue
                raise RunDirectoryError(_held_message(self.lock_path, holder)) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            return
        raise RunDirectoryError(_held_message(self.lock_path, self._holder()))

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Remove the lock a dead process left, and only that one.

        Two runs may find the same stale lock at once. Each moves the lock aside under a name of its own (one
        rename wins per lock file) and removes it only if it is the stale record it read; a fresh lock the other
        run has taken meanwhile is put back, so that run keeps it and this one is refused.
        """
        aside = self.lock_path.with_name(f".{LOCK}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved != stale:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.lock_path)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if _ours(self._holder()):
            self.lock_path.unlink(missing_ok=True)
        if self._made and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # made for the lock by a run that was refused before writing anything

    def held(self) -> bool:
        """True while a live process holds ``run.lock`` (a run whose process died or stopped holds none)."""
        holder = self._holder()
        return holder is not None and not _gone(holder)

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @contextlib.contextmanager
    def locked(self) -> Iterator["RunDirectory"]:
        """Hold ``run.lock`` for the block."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def _gone(holder: Mapping[str, Any]) -> bool:
    """True when the lock's process is known to have ended: same host, and no such pid."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _ours(holder: Mapping[str, Any] | None) -> bool:
    """Whether a lock record is this process's own (it took the lock and is checking the folder it holds)."""
    return holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _held_message(path: Path, holder: Mapping[str, Any] | None) -> str:
    who = (f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder
           else "a process that left no readable record")
    return (f"{str(path.parent)!r} is in use by another lcpress run ({who}); wait for it to finish, or use another "
            f"output_dir. If that run is certainly gone (on another machine, say), delete {str(path)!r}.")


def changed_keys(recorded: Any, current: Any, prefix: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Key paths whose values differ between two configs as plain dicts (``schedule.steps: 10 → 20``)."""
    if prefix in ignore:
        return []
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            found += changed_keys(recorded.get(key), current.get(key), path, ignore)
        return found
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        return [k for i, (a, b) in enumerate(zip(recorded, current))
                for k in changed_keys(a, b, f"{prefix}[{i}]", ignore)]
    if json.dumps(recorded, sort_keys=True, default=str) != json.dumps(current, sort_keys=True, default=str):
        return [f"{prefix}: {json.dumps(recorded, default=str)} → {json.dumps(current, default=str)}"]
    return []

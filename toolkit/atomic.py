"""Atomic file replacement: a write either happens whole or not at all.

Every file lcpress writes — model files, checkpoints, ``run.json``, cost
tables, ONNX exports — goes to a temporary file beside its target and is
renamed over it in one step, so a crash or an error leaves the old file (or
none), never half of one. The new file gets the permissions a plain
``open(path, "w")`` would give it (the user's umask), not the private 0600 of
a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from lcpress.errors import FileWriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it, in one rename, if the block succeeds.

    Whatever the block raises, ``path`` is left as it was and the temporary
    file is removed: a failed or interrupted write never costs a user the
    file they had.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except FileWriteError:
        raise
    except OSError as exc:  # a full disk, a file-size limit: said in one line, the old file kept
        raise _write_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(path: Path, exc: OSError) -> FileWriteError:
    """One line for a failed write: which file, why, and that the file it would replace is kept."""
    return FileWriteError(exc.errno, f"cannot write {str(path)!r} ({exc.strerror or exc}); the file it would "
                                     f"replace is as it was. Free some space, or write elsewhere, and run again")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`replacing`), flushed to disk before the rename:
    ``run.json`` says which files a run holds, and after a power loss it must not name a checkpoint that isn't."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, flushed to disk before the rename."""
    with replacing(Path(path)) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def synced(path: str | Path) -> None:
    """Flush a file another writer filled (safetensors writes its own) to disk, before :func:`replacing` renames it."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())

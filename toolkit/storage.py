"""Pickle-free files: safetensors payload + JSON metadata, written atomically.

Checkpoints and saved models both hold nested Python structures (optimizer
state, per-task θ, manifests) that mix tensors and plain values.
:func:`pack` splits such a structure into a flat ``{name: tensor}`` dict for
safetensors and a JSON document that refers to tensors by name;
:func:`unpack` reverses it. Nothing is ever unpickled, so a tampered file can
at worst fail to load.

Files are written to a temporary name in the same directory, fsynced and
renamed over the target, so a crash leaves either the old file or the new one,
never half of one. A SHA-256 of the tensor payload, kept in the metadata,
catches files that were truncated or altered after writing, whether in
the tensors or in the metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CheckpointError

META_KEY = "lcpress"


def pack(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """JSON-able copy of ``obj``; tensors move into ``tensors`` under ``prefix``."""
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {"__items__": [[_key(k), pack(v, tensors, f"{prefix}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [pack(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} without pickle")


def _key(k: Any) -> Any:
    if isinstance(k, (str, int)) and not isinstance(k, bool):
        return k
    raise TypeError(f"cannot store dict key {k!r}")


def unpack(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(doc, dict):
        if "__tensor__" in doc:
            try:
                return tensors[doc["__tensor__"]]
            except KeyError:
                raise CheckpointError(f"the file refers to tensor {doc['__tensor__']!r} but does not hold it") from None
        if "__items__" in doc:
            return {k: unpack(v, tensors) for k, v in doc["__items__"]}
        raise CheckpointError("unexpected entry in the file's metadata")
    if isinstance(doc, list):
        return [unpack(v, tensors) for v in doc]
    return doc


def payload_digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and the metadata."""
    h = hashlib.sha256()
    if meta is not None:
        h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` and the JSON ``meta`` to one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    doc = dict(meta, sha256=payload_digest(tensors, meta))
    data = st_save(tensors, metadata={META_KEY: json.dumps(doc)})
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it, in one rename, if the block succeeds.

    Whatever the block raises, ``path`` is left as it was and the temporary
    file is removed: a failed or interrupted write never costs a user the
    file they had.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: str | Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`write_file`; any damage is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise CheckpointError(
            f"{what} {str(path)!r} is not a readable lcpress file (truncated, corrupted, or not written by lcpress): {exc}"
        ) from None
    expected = meta.pop("sha256", None)
    if expected != payload_digest(tensors, meta):
        raise CheckpointError(
            f"{what} {str(path)!r} is corrupted: its content does not match the checksum written with it"
        )
    return tensors, meta

"""Pickle-free files: a safetensors payload with a JSON document in its header, written atomically.

Checkpoints and saved models are both one safetensors file whose header
holds lcpress's JSON metadata (``__metadata__["lcpress"]``); nested
structures that mix tensors and plain values are split with
:func:`lcpress.core.tree.split_tensors`. Nothing is ever unpickled, so a
tampered file can at worst fail to load.

Files are written to a temporary name in the same directory, fsynced and
renamed over the target (:mod:`lcpress.atomic`), so a crash leaves either the
old file or the new one, never half of one. A SHA-256 of the tensor payload
and the metadata, kept in the metadata, catches files that were truncated or
altered by accident after writing (it is not a signature: see
docs/guarantees.md for what a crafted file can and cannot do).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save_file as st_save_file

from lcpress.atomic import replacing, synced
from lcpress.errors import CheckpointError

META_KEY = "lcpress"


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
        if t.numel():  # the tensor's own bytes, not a copy of them: a checkpoint is the model's size several times
            h.update(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def write_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` and the JSON ``meta`` to one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    doc = dict(meta, sha256=payload_digest(tensors, meta))
    with replacing(path) as tmp:  # written straight to the file, never whole in memory as one bytes object
        st_save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(doc)})
        synced(tmp)


def read_file(path: str | Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`write_file`; any damage is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    raw = path.read_bytes()  # not memory-mapped: a tensor must not change when someone rewrites the file later
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        if isinstance(header, dict) and META_KEY not in (header.get("__metadata__") or {}):
            raise CheckpointError(
                f"{what} {str(path)!r} is a safetensors file lcpress did not write (it holds no lcpress manifest). A "
                f"plain state dict (save_pretrained, safetensors.torch.save_file) loads with "
                f"model.load_state_dict(safetensors.torch.load_file(path)), or as model.weights in a config")
        meta = json.loads(header["__metadata__"][META_KEY])
        if not isinstance(meta, dict):
            raise ValueError(f"its lcpress metadata is a {type(meta).__name__}, not a mapping")
        expected = meta.pop("sha256", None)
        actual = payload_digest(tensors, meta)
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise CheckpointError(
            f"{what} {str(path)!r} is not a readable lcpress file (truncated, corrupted, or not written by lcpress): {exc}"
        ) from None
    if expected != actual:
        raise CheckpointError(
            f"{what} {str(path)!r} is corrupted: its content does not match the checksum written with it"
        )
    return tensors, meta

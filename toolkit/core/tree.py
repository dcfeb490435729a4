"""Nested structures of tensors and plain values, split into JSON and a flat tensor dict — never pickled.

Checkpoints, saved models and the messages between distributed ranks all
carry nested Python structures (an optimizer's state, per-task θ, a
history) that mix tensors with plain values. :func:`split_tensors` turns such
a structure into a JSON document that names its tensors, plus a flat
``{name: tensor}`` dict for safetensors; :func:`join_tensors` reverses it.
Only dicts, lists, tuples (read back as lists), tensors and JSON scalars are
allowed, so reading one back can build nothing else.
"""

from __future__ import annotations

from typing import Any

import torch

from lcpress.errors import CheckpointError


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """JSON-able copy of ``obj``; its tensors move into ``tensors`` under names starting with ``prefix``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__items__": [[_key(k), split_tensors(v, tensors, f"{prefix}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} without pickle")


def _key(k: Any) -> Any:
    if isinstance(k, (str, int)) and not isinstance(k, bool):
        return k
    raise TypeError(f"cannot store dict key {k!r}")


def join_tensors(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`; a document that does not fit its tensors is a :class:`CheckpointError`."""
    if isinstance(doc, dict):
        if "__tensor__" in doc:
            try:
                return tensors[doc["__tensor__"]]
            except (KeyError, TypeError):
                raise CheckpointError(f"the file refers to tensor {doc['__tensor__']!r} but does not hold it") from None
        if "__items__" in doc and isinstance(doc["__items__"], list):
            items = doc["__items__"]
            if not all(isinstance(i, list) and len(i) == 2 and isinstance(i[0], (str, int)) for i in items):
                raise CheckpointError("malformed entry in the file's metadata (a mapping's items)")
            return {k: join_tensors(v, tensors) for k, v in items}
        raise CheckpointError("unexpected entry in the file's metadata")
    if isinstance(doc, list):
        return [join_tensors(v, tensors) for v in doc]
    return doc

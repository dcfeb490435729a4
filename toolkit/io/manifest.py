"""The manifest of a saved model, checked field by field before anything is built from it.

A model file's checksum catches accidents (a truncated download, a flipped
bit); it is no signature — anyone can write a file whose manifest claims any
structure and a matching checksum. So :func:`check_manifest` holds every
field to its type and to sane bounds (nesting depth, counts, argument
values) before :mod:`lcpress.io.modelfile` builds a single module, and the
structure is then built on PyTorch's ``meta`` device — no memory — and
compared with the tensors the file actually stores before any weight is
allocated. Every failure is a :class:`CheckpointError` naming the file and
the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lcpress.errors import CheckpointError

#: Deepest module tree a file may describe (a model nests a few dozen levels at most).
MAX_DEPTH = 64
#: Most modules one description may hold.
MAX_NODES = 200_000
#: Most compressed layers a manifest may list.
MAX_LAYERS = 100_000
#: Largest absolute integer a constructor argument may hold.
MAX_INT = 2**40
SCALARS = (type(None), bool, int, float, str)


def check_manifest(manifest: Any, path: str | Path) -> None:
    """Raise a :class:`CheckpointError` naming the field if ``manifest`` is not a well-formed model manifest."""
    where = _Where(path)
    if not isinstance(manifest, dict):
        raise where.error("(manifest)", f"expected a mapping, got {type(manifest).__name__}")
    for key in ("format", "lcpress_version", "torch_version"):
        where.expect(manifest.get(key), str, key)
    where.expect(manifest.get("format_version"), int, "format_version")
    layers = manifest.get("layers", [])
    where.expect(layers, list, "layers")
    if len(layers) > MAX_LAYERS:
        raise where.error("layers", f"{len(layers)} entries, more than {MAX_LAYERS}")
    for i, layer in enumerate(layers):
        _check_layer(layer, f"layers[{i}]", where)
    if manifest.get("architecture") is not None:
        check_module_tree(manifest["architecture"], "architecture", where)
    not_rebuildable = manifest.get("not_rebuildable", [])
    where.expect(not_rebuildable, list, "not_rebuildable")
    for i, name in enumerate(not_rebuildable):
        where.expect(name, str, f"not_rebuildable[{i}]")
    if manifest.get("config") is not None:
        where.expect(manifest["config"], dict, "config")
    tied = manifest.get("tied", {})
    where.expect(tied, dict, "tied")
    for alias, name in tied.items():
        where.expect(name, str, f"tied.{alias}")


def _check_layer(layer: Any, field: str, where: "_Where") -> None:
    where.expect(layer, dict, field)
    where.expect(layer.get("name"), str, f"{field}.name")
    where.expect(layer.get("scheme", ""), str, f"{field}.scheme")
    where.expect(layer.get("realized", False), bool, f"{field}.realized")
    shape = layer.get("weight_shape", [])
    where.expect(shape, list, f"{field}.weight_shape")
    if len(shape) > 8 or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_INT for s in shape):
        raise where.error(f"{field}.weight_shape", f"expected up to 8 non-negative sizes, got {shape!r}")
    for key in ("reason",):
        if key in layer:
            where.expect(layer[key], str, f"{field}.{key}")
    if "form" in layer:
        where.expect(layer["form"], dict, f"{field}.form")
    aliases = layer.get("aliases", [])
    where.expect(aliases, list, f"{field}.aliases")
    for j, alias in enumerate(aliases):
        where.expect(alias, str, f"{field}.aliases[{j}]")
    if layer.get("realized"):
        check_module_tree(layer.get("module"), f"{field}.module", where)


def check_module_tree(doc: Any, field: str, where: "_Where | str | Path") -> None:
    """A module description (``{type, args, children}``, nested) within the depth, count and argument bounds."""
    where = where if isinstance(where, _Where) else _Where(where)
    stack = [(doc, field, 1)]
    nodes = 0
    while stack:  # iterative: a file nested a million levels deep must not exhaust Python's stack
        node, at, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise where.error(at, f"module tree nested deeper than {MAX_DEPTH} levels")
        if nodes > MAX_NODES:
            raise where.error(field, f"more than {MAX_NODES} modules")
        where.expect(node, dict, at)
        where.expect(node.get("type"), str, f"{at}.type")
        args = node.get("args", {})
        where.expect(args, dict, f"{at}.args")
        for key, value in args.items():
            if not key.isidentifier() or key.startswith("_") or key in PLACEMENT:  # device= allocates past meta
                raise where.error(f"{at}.args.{key}", "not a constructor argument a model file may set")
            _check_argument(value, f"{at}.args.{key}", where)
        children = node.get("children", [])
        where.expect(children, list, f"{at}.children")
        for i, child in enumerate(children):
            if not (isinstance(child, list) and len(child) == 2 and isinstance(child[0], str)):
                raise where.error(f"{at}.children[{i}]", "expected [name, module]")
            if not _child_name(child[0]):  # `_parameters`, `training`: attributes of every module, not children
                raise where.error(f"{at}.children[{i}]", f"{child[0]!r} is not a submodule name")
            stack.append((child[1], f"{at}.children[{i}]", depth + 1))


#: Constructor arguments that place or type a module's tensors: the file decides neither (they are built on the
#: meta device and take the stored tensors' dtype).
PLACEMENT = frozenset({"device", "dtype"})

#: Names nn.Module itself holds: a child under one of them would replace the module's own state.
_MODULE_ATTRIBUTES = frozenset(dir(torch.nn.Module()))


def _child_name(name: str) -> bool:
    """A name ``add_module`` takes for a child of any module: not empty, no dot, not an attribute every module has."""
    return bool(name) and "." not in name and name not in _MODULE_ATTRIBUTES


def _check_argument(value: Any, field: str, where: "_Where") -> None:
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) > 16:
        raise where.error(field, f"a list of {len(value)} values; constructor arguments hold at most 16")
    for v in values:
        if not isinstance(v, SCALARS) or isinstance(v, list):
            raise where.error(field, f"expected numbers, strings or booleans, got {type(v).__name__}")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            raise where.error(field, f"{v} is out of range")
        if isinstance(v, str) and len(v) > 256:
            raise where.error(field, "a string of more than 256 characters")


class _Where:
    """Builds the errors: the file, the field, what is wrong."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def error(self, field: str, message: str) -> CheckpointError:
        return CheckpointError(f"model file {self.path!r}: manifest field {field}: {message}; the file is damaged or "
                               f"was not written by lcpress, and nothing was built from it")

    def expect(self, value: Any, kind: type, field: str) -> None:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise self.error(field, f"expected {kind.__name__}, got {type(value).__name__}")

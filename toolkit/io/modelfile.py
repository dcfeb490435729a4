"""Save and load realized models: one safetensors file with a JSON manifest inside.

The manifest sits in the safetensors header (``__metadata__["lcpress"]``), so
weights and description can never drift apart and the file is written
atomically as one unit. It records the lcpress and torch versions, every
compressed layer (scheme, form, original weight shape, and the JSON
description of its realized module), the config of the run, and — when the
whole model is built from layers lcpress knows — the full architecture.
``lcpress info FILE`` prints it.

Loading never unpickles: structures are rebuilt from allow-listed classes
(:mod:`lcpress.nn.architecture`, plus the realized-module classes installed
plugins allow-list through ``lcpress_register_modules``) and tensors come
from safetensors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lcpress.core.registry import get_registry
from lcpress.core.surgery import get_module, replace_module, unwrapped
from lcpress.errors import CheckpointError, LcpressError
from lcpress.io.files import read_file, write_file
from lcpress.io.manifest import check_manifest
from lcpress.nn.architecture import Allowed, module_from_json, module_to_json, unsupported, with_plugins
from lcpress.nn.codecs import DecodedLayer
from lcpress.version import __version__

FORMAT = "lcpress-model"
FORMAT_VERSION = 1


def save(model: nn.Module, path: str | Path, *, config: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (realized or not) to ``path``; refuses to overwrite unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True (CLI: --force) to replace it")
    outer, model = model, unwrapped(model)
    allowed = allowed_modules()
    layers = []
    for record in _records(outer, model):
        entry = dict(record)
        if entry.get("realized"):
            entry["module"] = module_to_json(get_module(model, entry["name"]), allowed)
        layers.append(entry)
    missing = unsupported(model, allowed)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lcpress_version": __version__,
        "torch_version": torch.__version__,
        "layers": layers,
        "architecture": None if missing else module_to_json(model, allowed),
        "not_rebuildable": missing,
        "config": config,
    }
    tensors, tied = stored_once(model.state_dict())
    if tied:
        manifest["tied"] = tied
    write_file(path, tensors, manifest)
    return path


def stored_once(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each tensor of ``state`` under its first name, and every other name of it mapped to that one.

    A tied weight (an output layer sharing its embedding's matrix) or a submodule registered under two names
    appears in ``state_dict`` once per name. safetensors stores a block of memory once, and a file holding two
    copies would load them untied, so the file keeps one and the manifest says which names share it. A tensor
    that overlaps another without being the same view is stored as its own copy.
    """
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, tensor in state.items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and view in views:
            tied[name] = views[view]
            continue
        if tensor.numel() == 0 or storage in storages:
            tensor = tensor.clone()
        else:
            views[view] = name
            storages.add(storage)
        kept[name] = tensor
    return kept, tied


def allowed_modules() -> Allowed:
    """The module classes a model file may be built from: lcpress's own and the installed plugins'."""
    return with_plugins(get_registry().modules)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a saved model (the whole file checked, the manifest validated field by field)."""
    _, manifest = _read(path)
    return manifest


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, manifest = read_file(path, what="model file")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is an lcpress file but not a saved model (format {manifest.get('format')!r})")
    version = manifest.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer lcpress ({manifest.get('lcpress_version')}); upgrade lcpress to load it"
        )
    check_manifest(manifest, path)
    return tensors, manifest


@dataclass
class FileReport:
    """What ``lcpress info`` says about a model file, from exactly the checks ``load`` makes."""

    manifest: dict[str, Any]
    rebuildable: bool
    why_not: str = ""


def inspect(path: str | Path) -> FileReport:
    """Check a model file as :func:`load` would — and build its architecture on the meta device, allocating nothing."""
    tensors, manifest = _read(path)
    if manifest.get("architecture") is None:
        classes = ", ".join(manifest.get("not_rebuildable", [])) or "unknown"
        return FileReport(manifest, False, f"needs the model class: {classes}")
    try:
        _fitting(_on_meta(lambda: module_from_json(manifest["architecture"], allowed_modules()), path), tensors, path)
    except CheckpointError as exc:
        return FileReport(manifest, False, str(exc))
    return FileReport(manifest, True)


def _on_meta(build, path: str | Path, where: str = "") -> nn.Module:
    """Build a module tree on the ``meta`` device: shapes without memory, whatever sizes the file claims.

    ``where``: what is being built (", layer 'fc' (scheme tucker2)"), named with the file in any error.
    """
    try:
        with torch.device("meta"):
            return build()
    except CheckpointError as exc:
        raise CheckpointError(f"model file {str(path)!r}{where}: {exc}") from None
    except Exception as exc:  # allow-listed constructors given arguments that no saved model has
        raise CheckpointError(f"model file {str(path)!r}{where}: its manifest describes a module lcpress cannot "
                              f"build: {type(exc).__name__}: {exc}") from None


def _fitting(model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    """``model`` if its state dict has exactly the keys, shapes and kinds of dtype of the stored tensors; else which one not."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        key, what = (missing[0], "is missing from the file") if missing else (unexpected[0], "is not in the model")
        raise CheckpointError(f"model file {str(path)!r}: tensor {key!r} {what} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected); the file does not hold this architecture")
    for key, value in expected.items():
        stored = tensors[key]
        # Modules are built in the default float dtype; a half-precision file's floats replace them as they
        # are (the load assigns the stored tensors). Any other dtype (integer codes, masks) must match.
        floats = stored.dtype.is_floating_point and value.dtype.is_floating_point
        if tuple(stored.shape) != tuple(value.shape) or (stored.dtype != value.dtype and not floats):
            raise CheckpointError(f"model file {str(path)!r}: tensor {key!r} is stored as {tuple(stored.shape)} "
                                  f"{stored.dtype} but the described module holds {tuple(value.shape)} {value.dtype}")
    for name, module in model.named_modules():  # a codec decodes its layer's weight: a larger one is a forged file
        for codec in module.codecs if isinstance(module, DecodedLayer) else ():
            if module.weight_shape is not None and tuple(codec.shape) != tuple(module.weight_shape):
                raise CheckpointError(f"model file {str(path)!r}: layer {name!r} holds a weight of shape "
                                      f"{tuple(module.weight_shape)}, but the file decodes one of {tuple(codec.shape)}")
    return model


def _records(outer: nn.Module, inner: nn.Module) -> list[dict[str, Any]]:
    """The compressed layers' records, named inside ``inner``: a model compressed inside a wrapper
    (``nn.DataParallel``) has them on the wrapper, every name prefixed with the wrapper's (``module.``)."""
    if inner is outer or getattr(inner, "lcpress_layers", None):
        return list(getattr(inner, "lcpress_layers", []))
    prefix = next((f"{name}." for name, module in outer.named_modules() if module is inner and name), "")
    return [dict(r, name=r["name"].removeprefix(prefix), aliases=[a.removeprefix(prefix) for a in r.get("aliases", [])])
            for r in getattr(outer, "lcpress_layers", [])]


def load(path: str | Path, model: nn.Module | None = None, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model.

    With ``model`` (the original, uncompressed architecture object), its
    compressed layers are swapped for the saved realized structure and all
    weights are loaded. Without it, the model is rebuilt from the manifest —
    possible when it consists only of layers lcpress knows. The manifest is
    validated and the structure built on the ``meta`` device and checked
    against the stored tensors before any memory is allocated; the weights
    then become the file's tensors themselves.
    """
    tensors, manifest = _read(path)
    allowed = allowed_modules()
    if model is None:
        if manifest.get("architecture") is None:
            classes = ", ".join(manifest.get("not_rebuildable", [])) or "unknown"
            raise CheckpointError(
                f"{str(path)!r} holds a model with classes lcpress cannot rebuild on its own ({classes}); "
                f"pass the architecture: lcpress.load(path, model=MyModel())"
            )
        model = _on_meta(lambda: module_from_json(manifest["architecture"], allowed), path)
        passed = model
    else:
        passed, model = model, unwrapped(model)  # a compiled or DataParallel architecture: its module takes the layers
        with _undone_on_error(model):
            _load_into(model, tensors, manifest, allowed, path, map_location)
        return passed
    _load_into(model, tensors, manifest, allowed, path, map_location, swap=False)
    return passed


@contextlib.contextmanager
def _undone_on_error(model: nn.Module) -> Iterator[None]:
    """Put every module's parameters, buffers and children back if the block fails: a load that is refused (a file
    of another architecture, a device this machine lacks) leaves the user's model exactly as it was."""
    saved = [(m, dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    try:
        yield
    except BaseException:
        for module, params, buffers, children in saved:
            for table, old in ((module._parameters, params), (module._buffers, buffers), (module._modules, children)):
                table.clear()
                table.update(old)
        raise


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], allowed: Allowed,
               path: str | Path, map_location: str | torch.device, swap: bool = True) -> None:
    """Swap the saved realized layers into ``model`` (``swap``), then give it the file's tensors."""
    _refuse_unavailable(map_location, path)
    swapped: list[str] = []
    for layer in manifest.get("layers", []) if swap else ():
        # a layer inside one already swapped in (compressed again, e.g. low rank then quantize) came with it
        if layer.get("realized") and not any(layer["name"].startswith(f"{s}.") for s in swapped):
            _swap_in(model, layer, allowed, path)
            swapped.append(layer["name"])
    tied = _tied(manifest, tensors, path)
    tensors = {**tensors, **{alias: tensors[name] for alias, name in tied.items()}}
    _fitting(model, tensors, path)
    model.load_state_dict({k: v.to(map_location) for k, v in tensors.items()}, strict=True, assign=True)
    _tie(model, tied)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"model file {str(path)!r}: {leftover[0]!r} holds state the file does not store; "
                              f"lcpress cannot rebuild that module class from a file")
    model.lcpress_layers = manifest.get("layers", [])
    model.to(map_location)


def _refuse_unavailable(map_location: str | torch.device, path: str | Path) -> None:
    """A device torch cannot use here is named before anything is built or moved."""
    device = torch.device(map_location)
    if device.type == "meta":
        raise CheckpointError(f"cannot load {str(path)!r} onto the meta device: a loaded model holds the file's "
                              f"weights; load it on 'cpu' (the default) and move it")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"cannot load {str(path)!r} onto {str(device)!r}: torch sees no CUDA device here; "
                              f"load it with map_location='cpu'")


def _tied(manifest: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path) -> dict[str, str]:
    """The manifest's map of tied names to stored ones, each checked against the stored tensors."""
    tied = manifest.get("tied", {})
    for alias, name in tied.items():
        if name not in tensors or alias in tensors:
            raise CheckpointError(f"model file {str(path)!r}: its manifest ties {alias!r} to {name!r}, but the file "
                                  f"stores {'the first' if alias in tensors else 'no tensor'} of those names")
    return tied


def _tie(model: nn.Module, tied: dict[str, str]) -> None:
    """Make every tied name hold the very parameter (or buffer) of the name it shares, as in the saved model.

    ``load_state_dict(assign=True)`` gives each name a tensor of its own; an optimizer would then update a tied
    weight twice and its two names would drift apart.
    """
    for alias, name in tied.items():
        owner_name, _, leaf = alias.rpartition(".")
        source_name, _, source_leaf = name.rpartition(".")
        owner, source = get_module(model, owner_name), get_module(model, source_name)
        if source_leaf in source._parameters:
            owner._parameters[leaf] = source._parameters[source_leaf]
        else:
            owner._buffers[leaf] = source._buffers[source_leaf]


def _swap_in(model: nn.Module, layer: dict[str, Any], allowed: Allowed, path: str | Path) -> None:
    """Put a saved layer's realized structure (built on meta) into the user's architecture."""
    try:
        current = get_module(model, layer["name"])
    except LcpressError:
        raise CheckpointError(f"model file {str(path)!r} compresses layer {layer['name']!r}, which the given model "
                              f"does not have; pass the architecture the model was compressed from") from None
    weight = getattr(current, "weight", None)
    if weight is None or list(weight.shape) != list(layer["weight_shape"]):
        raise CheckpointError(
            f"layer {layer['name']!r} of the given model does not match the saved one "
            f"(expected a weight of shape {layer['weight_shape']}); pass the architecture the model was compressed from"
        )
    for alias in layer.get("aliases", []):  # another name of this same layer (a shared module), nothing else
        try:
            same = isinstance(alias, str) and bool(alias) and get_module(model, alias) is current
        except LcpressError:
            same = False
        if not same:
            raise CheckpointError(f"model file {str(path)!r} names {alias!r} as another name of layer "
                                  f"{layer['name']!r}, which it is not in the given model; pass the architecture the "
                                  f"model was compressed from")
    where = f", layer {layer['name']!r}" + (f" (scheme {layer['scheme']!r})" if layer.get("scheme") else "")
    new = _on_meta(lambda: module_from_json(layer["module"], allowed), path, where)
    replace_module(model, layer["name"], new.train(current.training), layer.get("aliases", []))  # the mode it replaces

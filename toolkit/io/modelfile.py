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

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcpress.core.registry import get_registry
from lcpress.core.surgery import get_module, replace_module
from lcpress.errors import CheckpointError
from lcpress.io.files import read_file, write_file
from lcpress.nn.architecture import Allowed, module_from_json, module_to_json, unsupported, with_plugins
from lcpress.version import __version__

FORMAT = "lcpress-model"
FORMAT_VERSION = 1


def save(model: nn.Module, path: str | Path, *, config: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (realized or not) to ``path``; refuses to overwrite unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True (CLI: --force) to replace it")
    allowed = allowed_modules()
    layers = []
    for record in getattr(model, "lcpress_layers", []):
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
    write_file(path, dict(model.state_dict()), manifest)
    return path


def allowed_modules() -> Allowed:
    """The module classes a model file may be built from: lcpress's own and the installed plugins'."""
    return with_plugins(get_registry().modules)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a saved model (validates the whole file)."""
    _, manifest = _read(path)
    return manifest


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, manifest = read_file(path, what="model file")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is an lcpress file but not a saved model (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer lcpress ({manifest.get('lcpress_version')}); upgrade lcpress to load it"
        )
    return tensors, manifest


def load(path: str | Path, model: nn.Module | None = None, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model.

    With ``model`` (the original, uncompressed architecture object), its
    compressed layers are swapped for the saved realized structure and all
    weights are loaded. Without it, the model is rebuilt from the manifest —
    possible when it consists only of layers lcpress knows.
    """
    tensors, manifest = _read(path)
    if model is None:
        if manifest.get("architecture") is None:
            classes = ", ".join(manifest.get("not_rebuildable", [])) or "unknown"
            raise CheckpointError(
                f"{str(path)!r} holds a model with classes lcpress cannot rebuild on its own ({classes}); "
                f"pass the architecture: lcpress.load(path, model=MyModel())"
            )
        model = module_from_json(manifest["architecture"], allowed_modules())
    else:
        for layer in manifest.get("layers", []):
            if not layer.get("realized"):
                continue
            current = get_module(model, layer["name"])
            weight = getattr(current, "weight", None)
            if weight is None or list(weight.shape) != list(layer["weight_shape"]):
                raise CheckpointError(
                    f"layer {layer['name']!r} of the given model does not match the saved one "
                    f"(expected a weight of shape {layer['weight_shape']}); pass the architecture the model was compressed from"
                )
            replace_module(model, layer["name"], module_from_json(layer["module"], allowed_modules()),
                           layer.get("aliases", []))
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit the model: {exc}") from None
    model.lcpress_layers = manifest.get("layers", [])
    return model.to(map_location)

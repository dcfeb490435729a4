"""Build the model and data loaders that a config's ``model`` / ``data`` sections name.

The Python API takes objects; the CLI needs them from the config: a built-in
example (the digits CNN, trained on first use and cached in the run
directory), or a ``module:function`` factory from the user's own code.
Weights load without pickle (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lcpress.config import DataConfig, ModelConfig
from lcpress.errors import ConfigError, LcpressError


def import_factory(spec: str, key: str) -> Callable[..., Any]:
    """Resolve ``'package.module:function'`` (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: expected 'module:function', got {spec!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}") from None


def build_loaders(cfg: DataConfig, seed: int) -> tuple[Any, Any]:
    if cfg.builtin == "digits":
        from lcpress.runs.demo import digits_loaders

        return digits_loaders(cfg.batch_size, seed)
    loaders = import_factory(cfg.factory, "data.factory")()  # type: ignore[arg-type]
    if not (isinstance(loaders, (tuple, list)) and len(loaders) == 2):
        raise ConfigError("data.factory: must return (train_loader, eval_loader)")
    return loaders[0], loaders[1]


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict from .safetensors, or from a .pt file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.weights: {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LcpressError(f"model.weights: cannot read {str(path)!r} as a weights-only state dict: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise LcpressError(f"model.weights: {str(path)!r} does not fit the model: {exc}") from None


def build_model(cfg: ModelConfig, train_loader: Any, cache_dir: Path | None, progress: bool = True) -> nn.Module:
    """The model to compress, trained (built-ins) or with its weights loaded."""
    if cfg.factory is not None:
        model = import_factory(cfg.factory, "model.factory")()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.factory: returned a {type(model).__name__}, not an nn.Module")
        if cfg.weights:
            load_weights(model, cfg.weights)
        return model
    from lcpress.runs.demo import digits_cnn, train_dense

    model = digits_cnn()
    if cfg.weights:
        load_weights(model, cfg.weights)
        return model
    # keyed by everything that shapes the trained weights, so a changed recipe retrains
    key = f"dense-{cfg.builtin}-e{cfg.pretrain_epochs}.safetensors"
    cached = cache_dir / key if cache_dir is not None else None
    if cached is not None and cached.is_file():
        load_weights(model, cached)
        return model
    torch.manual_seed(0)
    model = digits_cnn()
    train_dense(model, train_loader, epochs=cfg.pretrain_epochs, progress=progress)
    if cached is not None:
        from safetensors.torch import save_file

        cached.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cached))
    return model

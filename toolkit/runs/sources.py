"""Build the model and data loaders that a config's ``model`` / ``data`` sections name.

The Python API takes objects; the CLI needs them from the config: a built-in
example (the digits CNN, trained on first use and cached beside the run
directory), or a ``module:function`` factory from the user's own code.

Code runs only where the user pointed: a factory module is imported from the
config's folder (``base_dir``) or from the installed packages — never from
the current directory or a run directory implicitly. Weights load without
pickle (safetensors, or ``torch.load(weights_only=True)``), and a file that
does not fit the model names the file and the key.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from lcpress.config import DataConfig, ModelConfig
from lcpress.errors import ConfigError, LcpressError, listed
from lcpress.runs.demo import digits_cnn, digits_loaders, train_dense

log = logging.getLogger("lcpress")


def import_factory(spec: str, key: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """Resolve ``'package.module:function'``: from ``base_dir`` when the module lives there, else installed packages."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: expected 'module:function', got {spec!r}")
    try:
        with _importable_from(base_dir, module_name):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (looked in {str(base_dir)!r} and the installed packages)" if base_dir else ""
        raise ConfigError(f"{key}: cannot import {module_name!r}{where}: {exc}") from exc
    except Exception as exc:  # the user's module raised while it was imported
        raise LcpressError(f"{key}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}") from None


@contextlib.contextmanager
def _importable_from(base_dir: str | Path | None, module_name: str) -> Iterator[None]:
    """``base_dir`` on the import path for one import, and only when the module is there."""
    top = module_name.split(".")[0]
    folder = Path(base_dir) if base_dir is not None else None
    there = folder is not None and ((folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file())
    if not there:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def call_factory(spec: str, key: str, base_dir: str | Path | None) -> Any:
    """Import and call a factory; what it raises is reported as the factory's, naming the key."""
    factory = import_factory(spec, key, base_dir)
    try:
        return factory()
    except LcpressError:
        raise
    except Exception as exc:
        raise LcpressError(f"{key}: {spec!r} raised {type(exc).__name__}: {exc}") from exc


def build_loaders(cfg: DataConfig, seed: int, base_dir: str | Path | None = None) -> tuple[Any, Any]:
    if cfg.builtin == "digits":
        return digits_loaders(cfg.batch_size, seed)
    loaders = call_factory(cfg.factory, "data.factory", base_dir)  # type: ignore[arg-type]
    if not (isinstance(loaders, (tuple, list)) and len(loaders) == 2):
        raise ConfigError("data.factory: must return (train_loader, eval_loader)")
    return loaders[0], loaders[1]


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict from .safetensors, or from a .pt file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.weights: {str(path)!r} does not exist")
    if _is_lcpress_file(path):  # a model compressed before: its realized layers come with its weights
        from lcpress.io.modelfile import load

        load(path, model=model)
        log.info("model.weights: %s: a compressed model, loaded with its realized layers", path)
        return
    expected = model.state_dict()
    state, where = model_state(_read_state(path), expected)
    if where:
        log.info("model.weights: %s: loading %s", path, where)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {listed(missing, 5)}"] if missing else []) + \
                ([f"unexpected {listed(unexpected, 5)}"] if unexpected else [])
        raise LcpressError(f"model.weights: {str(path)!r} does not fit the model ({'; '.join(parts)}); give the "
                           f"weights of this architecture")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(expected[key].shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise LcpressError(f"model.weights: {str(path)!r} holds {key!r} of shape {shape}, but the model's is "
                               f"{tuple(expected[key].shape)}")
    model.load_state_dict(state)


#: What wraps a model's keys in files saved from a wrapper: DistributedDataParallel, torch.compile, a Lightning module.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def model_state(state: dict[str, Any], expected: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The state dict in ``state`` whose keys are exactly the model's, and where it was found ('' if it is ``state``).

    Training scripts save more than a state dict: ``{"model": …, "optimizer": …}``
    checkpoints, and keys prefixed by the wrapper the model was trained in
    (``module.`` under DistributedDataParallel). Either is taken only when the
    keys then match the model's exactly, so nothing is guessed; otherwise
    ``state`` comes back unchanged for the caller to report.
    """
    keys = set(expected)
    nested = [(f"the state dict under {name!r}", v) for name, v in state.items() if isinstance(v, dict)]
    for where, candidate in [("", state), *nested]:
        if set(candidate) == keys:
            return candidate, where
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in candidate) and \
                    {k[len(prefix):] for k in candidate} == keys:
                stripped = {k[len(prefix):]: v for k, v in candidate.items()}
                return stripped, f"{where or 'the file'} without the keys' {prefix!r} prefix"
    return state, ""


def _is_lcpress_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file lcpress wrote (its header holds lcpress's manifest)."""
    from safetensors import SafetensorError, safe_open

    from lcpress.io.files import META_KEY

    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False  # unreadable: _read_state says so


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise LcpressError(f"model.weights: {str(path)!r} is not a readable safetensors file: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text advises loading it unsafely: lcpress never does
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        held = f" (it holds a {found.group(1)})" if found else ""
        raise LcpressError(f"model.weights: {str(path)!r} is a pickled object{held}, not a state dict of tensors, "
                           f"and lcpress never unpickles code; save model.state_dict() (torch.save or, better, "
                           f"safetensors) and give that file") from None
    except Exception as exc:
        raise LcpressError(f"model.weights: cannot read {str(path)!r} as a weights-only state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise LcpressError(f"model.weights: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def build_model(cfg: ModelConfig, train_loader: Any, cache_dir: Path | None, progress: bool = True,
                base_dir: str | Path | None = None, seed: int = 0) -> nn.Module:
    """The model to compress, trained (built-ins) or with its weights loaded."""
    weights = Path(base_dir) / cfg.weights if cfg.weights and base_dir and not Path(cfg.weights).is_absolute() \
        else cfg.weights
    if cfg.factory is not None:
        model = call_factory(cfg.factory, "model.factory", base_dir)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.factory: returned a {type(model).__name__}, not an nn.Module")
        if weights:
            load_weights(model, weights)
        return model
    model = digits_cnn()
    if weights:
        load_weights(model, weights)
        return model
    cached = cache_dir / _cache_key(cfg, train_loader, seed) if cache_dir is not None else None
    if cached is not None and _load_cached(model, cached):
        return model
    torch.manual_seed(0)
    model = digits_cnn()
    train_dense(model, train_loader, epochs=cfg.pretrain_epochs, progress=progress)
    if cached is not None:
        _cache(model, cached)
    return model


def _cache_key(cfg: ModelConfig, train_loader: Any, seed: int) -> str:
    """Keyed by everything that shapes the trained weights (recipe, batch size, data order, lcpress's version),
    so a changed recipe retrains instead of reading another recipe's model."""
    from lcpress.version import __version__

    batch = getattr(train_loader, "batch_size", None)
    return f"dense-{cfg.builtin}-e{cfg.pretrain_epochs}-b{batch}-s{seed}-v{__version__}.safetensors"


def _load_cached(model: nn.Module, path: Path) -> bool:
    """Load a cached built-in model; a damaged file is moved aside with a warning (the model is retrained)."""
    if not path.is_file():
        return False
    try:
        load_weights(model, path)
    except LcpressError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        path.replace(aside)
        log.warning("the cached %s model %s could not be read (%s); moved it to %s and training it again",
                    path.name.split("-")[1], path, exc, aside.name)
        return False
    return True


def _cache(model: nn.Module, path: Path) -> None:
    """Write the trained built-in model to the cache atomically (a kill mid-write leaves no half file)."""
    from safetensors.torch import save

    from lcpress.atomic import write_bytes_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    except OSError as exc:  # a cache is a convenience: the run goes on without it
        log.warning("could not cache the trained model in %s (%s); the next run trains it again", path.parent, exc)

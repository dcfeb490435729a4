"""Module surgery: find a submodule by its dotted name, replace it in place, call a model.

Every layer swap lcpress makes — realizing a compressed layer, loading a saved
structure into the user's architecture, converting transformers' Conv1D —
goes through :func:`replace_module`, which ``setattr``s the new module on the
parent under the same name (``model.features.3`` stays ``model.features.3``)
and replaces every alias of a layer registered under several names, so a
shared layer stays shared (PEFT's ``_replace_module``, torchao's
``_replace_with_custom_fn_if_matches_filter``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from lcpress.errors import LcpressError


def get_module(root: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted ``name`` ('' is ``root``); a clear error when there is none."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        raise LcpressError(f"the model has no submodule {name!r}") from None


def uncompiled(model: nn.Module) -> nn.Module:
    """The user's own module inside ``torch.compile``'s wrapper (itself otherwise).

    The wrapper prefixes every name with ``_orig_mod.`` and is not a class a
    model file can rebuild; compressing and saving the module it wraps keeps
    the user's layer names and files. The wrapper calls that module, so it
    runs the compressed layers after recompiling.
    """
    inner = getattr(model, "_orig_mod", None)
    return inner if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module) else model


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``'s, ``nn.DataParallel``'s or ``DistributedDataParallel``'s wrapper.

    What a file holds and an exporter traces: the wrappers prefix every name (``_orig_mod.``, ``module.``) and are
    no class a model file can rebuild, so a model saved from inside one loads into the plain architecture.
    """
    model = uncompiled(model)
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return uncompiled(model.module) if isinstance(model, parallel) else model


def module_modes(model: nn.Module) -> dict[str, bool]:
    """Every submodule's train/eval mode, by name: a model may hold a part its user froze (``bn.eval()``), which
    ``model.train(was_training)`` after a pass in eval mode would unfreeze."""
    return {name: m.training for name, m in model.named_modules()}


def restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    """Each submodule back in the mode :func:`module_modes` recorded; a module put in since (a realized layer)
    takes the mode of the nearest recorded module above it, the layer it replaced."""
    for name, module in model.named_modules():
        owner = name
        while owner not in modes and owner:
            owner = owner.rpartition(".")[0]
        module.training = modes.get(owner, module.training)


@contextlib.contextmanager
def in_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """The block with ``model`` in train (or eval) mode; every submodule's own mode is restored after, whatever
    the block raised."""
    modes = module_modes(model)
    model.train(training)
    try:
        yield model
    finally:
        restore_modes(model, modes)


def replace_module(root: nn.Module, name: str, new: nn.Module, aliases: Sequence[str] = ()) -> nn.Module:
    """Put ``new`` at ``name`` (and every alias); returns the module it replaced.

    ``new`` is moved to the device of the module it replaces, unless it is a
    structure on the ``meta`` device whose tensors are still to be loaded.
    """
    old = get_module(root, name)
    ref = next(iter(old.parameters()), None)
    if ref is not None and not any(t.is_meta for t in [*new.parameters(), *new.buffers()]):
        new = new.to(device=ref.device)
    for full_name in (name, *aliases):
        parent_name, _, child = full_name.rpartition(".")
        parent = get_module(root, parent_name) if parent_name else root
        setattr(parent, child, new)
    return old


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict is passed as keyword arguments (Hugging Face style), a tuple or list as positional ones."""
    if isinstance(inputs, Mapping):  # a dict, or a tokenizer's BatchEncoding (a UserDict)
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in a model's input or output: a tensor, those in a tuple, list or mapping (Hugging Face outputs
    are dicts), or an output object's ``logits`` / ``last_hidden_state``."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in tensors_in(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    fields = (getattr(value, f, None) for f in ("logits", "last_hidden_state"))
    return [t for t in fields if isinstance(t, torch.Tensor)]


def first_tensor(out: Any) -> torch.Tensor:
    """The main tensor of a model's output (a tensor, the first of a tuple or dict, ``last_hidden_state``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return first_tensor(next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    for field in ("logits", "last_hidden_state"):  # Hugging Face output objects, and outputs shaped like them
        if isinstance(getattr(out, field, None), torch.Tensor):
            return getattr(out, field)
    raise LcpressError(f"cannot compare model outputs of type {type(out).__name__}: return a tensor, a tuple or "
                       f"dict of tensors, or an object with a 'logits' or 'last_hidden_state' tensor")

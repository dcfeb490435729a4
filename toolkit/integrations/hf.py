"""Hugging Face models: what lcpress needs to know about their layers.

BERT-style models (all-MiniLM, DistilBERT, RoBERTa …) are built from plain
``nn.Linear`` layers, which lcpress compresses and realizes like any other:
module surgery replaces ``encoder.layer.0.attention.self.query`` in place, and
the attention code simply calls the realized module. GPT-2-style models use
``transformers.pytorch_utils.Conv1D`` instead: a Linear whose weight is stored
transposed (in × out) and applied with ``addmm``. lcpress does not compress
those directly — a scheme would see the transposed matrix and a realized
module could not stand in for it — so :func:`conv1d_to_linear` first turns
each into the ``nn.Linear`` that computes exactly the same, and planning a
task over an unconverted Conv1D fails with a message that says so.

Nothing here imports transformers: Conv1D is recognized by its shape.
"""

from __future__ import annotations

import torch
from torch import nn

from lcpress.core.graph import is_conv1d
from lcpress.core.surgery import replace_module

__all__ = ["is_conv1d", "linear_from_conv1d", "conv1d_to_linear"]


def linear_from_conv1d(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what ``module`` (a Conv1D) computes."""
    in_features, out_features = module.weight.shape
    bias = getattr(module, "bias", None)
    linear = nn.Linear(in_features, out_features, bias=bias is not None,
                       device=module.weight.device, dtype=module.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(module.weight.T)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace, in place, every Conv1D of ``model`` by its equivalent ``nn.Linear``; returns their names.

    A Conv1D registered under several names (tied or shared) becomes one
    Linear registered under all of them.
    """
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name and is_conv1d(module):
            names.setdefault(id(module), []).append(name)
    for group in names.values():
        replace_module(model, group[0], linear_from_conv1d(model.get_submodule(group[0])), group[1:])
    return [group[0] for group in names.values()]

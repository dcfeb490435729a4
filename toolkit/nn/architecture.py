"""Describe a module tree as JSON and rebuild it — without pickle or user code.

Only classes on an allow-list can be described: common ``torch.nn`` layers and
containers, lcpress's own inference modules (:mod:`lcpress.nn`), and the
module classes plugins allow-list through the ``lcpress_register_modules``
hook; their constructor arguments are read from their attributes. A
realized layer (two thin Linear/Conv2d layers in an ``nn.Sequential``) is
always describable, so ``lcpress.load(path, model=MyNet())`` can rebuild the
compressed structure inside any architecture; a model built *only* from
allow-listed classes (an ``nn.Sequential`` CNN, say) can be rebuilt on its
own with ``lcpress.load(path)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from lcpress.errors import CheckpointError
from lcpress.nn.modules import GroupedLinear, InterleavedLowRank, ParallelSum, PointwiseConv2d, ScatterChannels
from lcpress.nn.codecs import (CodebookWeight, DecodedConv2d, DecodedEmbedding, DecodedLinear, DenseWeight,
                               SparseCodebookWeight, SparseWeight)

Args = Callable[[nn.Module], dict[str, Any]]
#: class name → (class, function reading its constructor arguments from an instance)
Allowed = Mapping[str, tuple[type[nn.Module], Args]]


def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
    }


def _norm_args(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _pool_args(m: nn.Module, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: (list(v) if isinstance(v, tuple) else v) for n in names for v in [getattr(m, n)]}


#: The classes every lcpress can rebuild: class name → (constructor, function reading its constructor arguments).
#: Every argument that changes what a module computes or holds is read, so a rebuilt model computes what the saved
#: one did (a pooling's divisor_override, a LayerNorm without bias).
ALLOWED: dict[str, tuple[type[nn.Module], Args]] = {
    "Sequential": (nn.Sequential, lambda m: {}),
    "ModuleList": (nn.ModuleList, lambda m: {}),
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    "Conv2d": (nn.Conv2d, _conv_args),
    "BatchNorm1d": (nn.BatchNorm1d, _norm_args),
    "BatchNorm2d": (nn.BatchNorm2d, _norm_args),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                           "elementwise_affine": m.elementwise_affine,
                                           "bias": m.bias is not None or not m.elementwise_affine}),
    "ReLU": (nn.ReLU, lambda m: {"inplace": m.inplace}),
    "GELU": (nn.GELU, lambda m: {"approximate": m.approximate}),
    "SiLU": (nn.SiLU, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Identity": (nn.Identity, lambda m: {}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p, "inplace": m.inplace}),
    "Softmax": (nn.Softmax, lambda m: {"dim": m.dim}),
    "LogSoftmax": (nn.LogSoftmax, lambda m: {"dim": m.dim}),
    "MaxPool2d": (nn.MaxPool2d, lambda m: _pool_args(m, ("kernel_size", "stride", "padding", "dilation",
                                                         "return_indices", "ceil_mode"))),
    "AvgPool2d": (nn.AvgPool2d, lambda m: _pool_args(m, ("kernel_size", "stride", "padding", "ceil_mode",
                                                         "count_include_pad", "divisor_override"))),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: _pool_args(m, ("output_size",))),
    "PointwiseConv2d": (PointwiseConv2d, lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                                                     "bias": m.bias is not None}),
    "GroupedLinear": (GroupedLinear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                                "groups": m.groups}),
    "ParallelSum": (ParallelSum, lambda m: {}),
    "ScatterChannels": (ScatterChannels, lambda m: {"channels": m.channels, "kept": m.kept, "dim": m.dim}),
    "InterleavedLowRank": (InterleavedLowRank, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                                          "rank": m.rank, "factor": m.factor,
                                                          "bias": m.second.bias is not None}),
    "DecodedLinear": (DecodedLinear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                                "bias": m.bias is not None}),
    "DecodedConv2d": (DecodedConv2d, _conv_args),
    "DecodedEmbedding": (DecodedEmbedding, lambda m: {"num_embeddings": m.num_embeddings,
                                                      "embedding_dim": m.embedding_dim,
                                                      "padding_idx": m.padding_idx}),
    "CodebookWeight": (CodebookWeight, lambda m: {"shape": list(m.shape), "entries": m.entries}),
    "SparseWeight": (SparseWeight, lambda m: {"shape": list(m.shape), "nonzeros": m.nonzeros}),
    "SparseCodebookWeight": (SparseCodebookWeight, lambda m: {"shape": list(m.shape), "nonzeros": m.nonzeros,
                                                               "entries": m.entries}),
    "DenseWeight": (DenseWeight, lambda m: {"shape": list(m.shape)}),
    "Embedding": (nn.Embedding, lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                                           "padding_idx": m.padding_idx, "max_norm": m.max_norm,
                                           "norm_type": m.norm_type, "scale_grad_by_freq": m.scale_grad_by_freq,
                                           "sparse": m.sparse}),
}


def with_plugins(extra: Allowed | None) -> Allowed:
    """The built-in allow-list plus the classes plugins registered (a plugin never replaces a built-in)."""
    return {**(extra or {}), **ALLOWED}


def unsupported(module: nn.Module, allowed: Allowed = ALLOWED) -> list[str]:
    """Names of the classes in ``module``'s tree that :func:`module_to_json` cannot handle."""
    return sorted({type(m).__name__ for m in module.modules() if _entry(m, allowed) is None})


def _entry(m: nn.Module, allowed: Allowed) -> tuple[type[nn.Module], Args] | None:
    entry = allowed.get(type(m).__name__)
    return entry if entry is not None and type(m) is entry[0] else None


def module_to_json(module: nn.Module, allowed: Allowed = ALLOWED) -> dict[str, Any]:
    """JSON description of ``module``'s tree (raises if a class is not allow-listed).

    A submodule registered under two names is described under each (``named_children`` would list it once and
    the rebuilt model would lack the second name); the model file ties their tensors again on loading.
    """
    entry = _entry(module, allowed)
    if entry is None:
        raise CheckpointError(f"{type(module).__name__} is not a module class lcpress can rebuild on its own")
    return {
        "type": type(module).__name__,
        "args": entry[1](module),
        "children": [[name, module_to_json(child, allowed)] for name, child in module._modules.items()
                     if child is not None],
    }


def module_from_json(doc: dict[str, Any], allowed: Allowed = ALLOWED) -> nn.Module:
    """Rebuild a module tree from :func:`module_to_json`'s output (only allow-listed classes)."""
    try:
        kind = doc["type"]
        cls, _ = allowed[kind]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"the file describes a module of unknown type {doc.get('type')!r}: neither torch.nn, lcpress nor an "
            f"installed plugin registers it. A plugin's scheme made it: install that package (`lcpress plugins` "
            f"lists what is installed), and check that LCPRESS_DISABLE_PLUGIN_AUTOLOAD or LCPRESS_LOAD_PLUGINS "
            f"does not leave it out") from None
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("args", {}).items()}
    try:
        module = cls(**args)
    except Exception as exc:  # an allow-listed class refusing arguments no saved model holds
        raise CheckpointError(f"cannot rebuild {kind} from the file's arguments {args}: {type(exc).__name__}: "
                              f"{exc}") from None
    for name, child in doc.get("children", []):
        try:  # as torch registers a child: never over one of the module's own attributes (in_features, weight …)
            module.add_module(str(name), module_from_json(child, allowed))
        except KeyError as exc:
            raise CheckpointError(f"cannot rebuild {kind}: its child {name!r}: {exc.args[0]}") from None
    return module

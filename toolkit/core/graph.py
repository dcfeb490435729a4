"""Trace a model once: the layer specs, execution order, and a networkx graph.

One forward pass on the example input records, through forward hooks, the
input shape and the number of calls of every Linear, Conv2d and Embedding layer (a shared
layer is priced per call). ``torch.fx`` then gives the dataflow graph as a
networkx DiGraph; models fx cannot trace (data-dependent control flow, many
Hugging Face models) get a chain graph in execution order instead, which is
what a sequential cost composition needs anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import networkx as nx
import torch
from torch import nn

from lcpress.core.forms import LayerSpec
from lcpress.core.surgery import call_model, in_mode, tensors_in
from lcpress.errors import LcpressError

log = logging.getLogger("lcpress.graph")

COMPRESSIBLE = (nn.Linear, nn.Conv2d, nn.Embedding)
#: The compressible classes in words, for messages: "nn.Linear, nn.Conv2d and nn.Embedding".
COMPRESSIBLE_TEXT = ", ".join(f"nn.{c.__name__}" for c in COMPRESSIBLE[:-1]) + f" and nn.{COMPRESSIBLE[-1].__name__}"


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (and look-alikes): ``y = x @ W + b`` with W of shape (in, nf).

    GPT-2-style models use it where others use ``nn.Linear``; lcpress refuses
    it with the fix (:func:`lcpress.integrations.hf.conv1d_to_linear`) rather
    than compress a transposed matrix. Recognized by its shape, so nothing
    here imports transformers.
    """
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int)
            and isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == module.nf)


#: torch modules whose forward reads their children's ``.weight`` instead of calling them.
WEIGHT_READING_PARENTS: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
)


def parent_reading_weights(model: nn.Module, name: str) -> str | None:
    """The class of the layer's parent when that parent's forward reads the layer's weight itself (a fused fast
    path), so no realized module can stand in for the layer; else None."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    return type(parent).__name__ if isinstance(parent, WEIGHT_READING_PARENTS) else None


def realization_problem(module: nn.Module) -> str | None:
    """Why the modules realizing this layer could not stand in for it, or None.

    A realized layer computes what its class's forward computes with Δ(θ); a subclass with a forward of its own
    (timm's weight-standardized ``StdConv2d``) or hooks on the module would be dropped with it, and the model would
    compute something else, so such layers are never compressed.
    """
    base = next((c for c in COMPRESSIBLE if isinstance(module, c)), None)
    if base is not None and type(module).forward is not base.forward:
        return (f"its class {type(module).__name__} has a forward of its own, which the plain layers realizing it "
                f"would not run; exclude it, or compress a plain nn.{base.__name__} holding the weight it uses")
    if base is not None and "forward" in vars(module):  # set on the instance (accelerate's device hooks do)
        return ("its forward was replaced on the module itself (accelerate's device_map hooks do that), which the "
                "plain layers realizing it would not carry; compress the model loaded without device_map, or "
                "exclude the layer")
    computed = not isinstance(getattr(module, "weight", None), nn.Parameter)  # a pre-hook computes the weight
    hooks = [kind for kind, found in (("forward", module._forward_hooks),  # (torch's pruning): judged elsewhere
                                      ("forward pre", {} if computed else module._forward_pre_hooks)) if found]
    if hooks:
        return (f"it has {' and '.join(hooks)} hooks, which the modules realizing it would not carry; remove them "
                f"before compressing (and register them again on the result), or exclude the layer")
    return None


@dataclass
class ModelGraph:
    """What one traced forward pass learned about a model."""

    specs: dict[str, LayerSpec]
    order: list[str]
    graph: nx.DiGraph
    aliases: dict[str, list[str]] = field(default_factory=dict)
    traced_with_fx: bool = False


def spec_of(module: nn.Module, input_shape: tuple[int, ...], calls: int = 1) -> LayerSpec:
    """The :class:`LayerSpec` of a Linear, Conv2d or Embedding module at ``input_shape``."""
    if isinstance(module, nn.Embedding):
        return LayerSpec("embedding", module.num_embeddings, module.embedding_dim, tuple(input_shape), bias=False,
                         calls=calls)
    if isinstance(module, nn.Linear):
        return LayerSpec("linear", module.in_features, module.out_features, tuple(input_shape),
                         bias=module.bias is not None, calls=calls)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            padding = _resolve_padding(module)
        else:
            padding = tuple(module.padding)
        return LayerSpec(
            "conv2d", module.in_channels, module.out_channels, tuple(input_shape),
            kernel_size=tuple(module.kernel_size), stride=tuple(module.stride), padding=padding,
            dilation=tuple(module.dilation), groups=module.groups, bias=module.bias is not None, calls=calls,
        )
    raise TypeError(f"{type(module).__name__} is not a layer lcpress can price (Linear, Conv2d or Embedding)")


def _resolve_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    # 'same' with stride 1: total padding d·(k−1), split evenly when it is even
    return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))  # type: ignore[return-value]


def trace(model: nn.Module, example_input: Any) -> ModelGraph:
    """Run ``model`` once on ``example_input`` and describe its layers."""
    names_of: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, COMPRESSIBLE):
            names_of.setdefault(id(module), []).append(name)
    shapes: dict[int, tuple[int, ...]] = {}
    calls: dict[int, int] = {}
    order: list[str] = []
    handles = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSIBLE) and id(module) not in seen:
            seen.add(id(module))

            def hook(mod: nn.Module, args: tuple, _name: str = name) -> None:
                key = id(mod)
                if key not in shapes:
                    shapes[key] = tuple(args[0].shape)
                    order.append(_name)
                calls[key] = calls.get(key, 0) + 1

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with in_mode(model, training=False), torch.no_grad():
            _traced_call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    specs = {name: spec_of(modules[name], shapes[id(modules[name])], calls[id(modules[name])]) for name in order}
    for name in _tied_later(modules, order):
        specs[name] = specs[name].with_(tied=True)
    aliases = {names[0]: names[1:] for names in names_of.values() if len(names) > 1}
    graph, with_fx = _dataflow_graph(model, order)
    return ModelGraph(specs, order, graph, aliases, with_fx)


def _tied_later(modules: dict[str, nn.Module], order: list[str]) -> list[str]:
    """Traced layers whose weight is the very tensor of a layer traced before them (tied weights): stored once."""
    seen: set[int] = set()
    later = []
    for name in order:
        weight = getattr(modules[name], "weight", None)
        if isinstance(weight, torch.Tensor):
            if id(weight) in seen:
                later.append(name)
            seen.add(id(weight))
    return later


def _traced_call(model: nn.Module, example_input: Any) -> None:
    """Run the model once on ``example_input``; a dict the model's forward takes whole gets the fix named."""
    try:
        call_model(model, example_input)
    except RuntimeError as exc:
        mismatch = _dtype_mismatch(model, example_input)
        if mismatch is None:
            raise
        raise LcpressError(f"the model could not run the example input ({exc}): {mismatch}") from exc
    except TypeError as exc:
        if not isinstance(example_input, Mapping):
            raise
        raise LcpressError(
            f"the model refused the example input ({type(exc).__name__}: {exc}). A dict is passed as keyword "
            f"arguments, model(**batch), as Hugging Face models take it; if your model's forward takes the dict "
            f"itself, wrap it in a tuple: example_input=(batch,), and have your loaders yield (batch,) too"
        ) from exc


def _dtype_mismatch(model: nn.Module, example_input: Any) -> str | None:
    """What to change when the inputs' real-valued dtype is not the weights' (float64 data, a float32 model)."""
    weights = {p.dtype for p in model.parameters() if p.is_floating_point()}
    real = {t.dtype for t in tensors_in(example_input) if t.is_floating_point()}
    if len(weights) != 1 or not real or real <= weights:
        return None
    want = next(iter(weights))
    return (f"its inputs are {', '.join(sorted(str(d) for d in real))} and its weights {want}; give inputs of the "
            f"weights' dtype (x.to({want}), or a collate_fn that casts them), or convert the model")


def _dataflow_graph(model: nn.Module, order: list[str]) -> tuple[nx.DiGraph, bool]:
    graph = nx.DiGraph()
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx cannot trace every model; the chain is still useful
        log.debug("torch.fx could not trace %s (%s); using execution order", type(model).__name__, exc)
        graph.add_nodes_from(order)
        nx.add_path(graph, order)
        return graph, False
    for node in traced.graph.nodes:
        label = node.target if node.op == "call_module" else node.name
        graph.add_node(str(label), op=node.op)
        for arg in node.all_input_nodes:
            src = arg.target if arg.op == "call_module" else arg.name
            graph.add_edge(str(src), str(label))
    return graph, True

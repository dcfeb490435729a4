"""Channel dependency groups: every place one channel index lives, found on the traced graph.

Pruning channel ``c`` of a Conv2d/Linear (its output row) is only a real saving
when everything that reads or carries that channel shrinks with it: the
BatchNorm entries and depthwise-conv rows that follow it, the other producers
it is added to (a residual sum), the input columns of every layer that reads it
— at an offset after a concatenation, as a block of features after a flatten,
as a whole attention head after ``scaled_dot_product_attention``. Such a set is
a *channel*; the channels with the same members form a :class:`ChannelGroup`
(e.g. the 64 output channels of one conv), and a pruning scheme keeps ``k`` of
a group's channels.

How they are found: the model is traced once with ``torch.export`` (an fx
graph of ATen ops that also traces Hugging Face models, which
``torch.fx.symbolic_trace`` cannot), and every producer's output rows get
integer labels. The labels travel through the graph *as tensors of the traced
shapes*: data-movement ops (view, reshape, transpose, permute, flatten, cat,
slice …) are applied to the label tensor itself, so offsets, blocks and head
splits come out exactly; elementwise ops pass labels through and merge the
labels of their operands (union–find); a layer reading labelled columns
records them as its input columns. A label that reaches something that mixes
channels (LayerNorm, softmax, an op not understood here), the model output,
or a sum with a full-width tensor that is not pruned (a residual stream) is
*blocked*: its channel cannot be removed, and the group says why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from lcpress.core.forms import LayerSpec
from lcpress.core.graph import realization_problem
from lcpress.core.surgery import get_module, in_mode
from lcpress.errors import LcpressError

log = logging.getLogger("lcpress.channels")

aten = torch.ops.aten

#: the layers lcpress prunes (``conv2d.padding``: a conv whose padding is a string, ``"same"``)
LAYERS = {aten.linear.default, aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
#: ops that pick positions fixed in the model's code: along a channel axis, pruning would move what they pick
PICKS = {aten.slice.Tensor, aten.select.int}
#: ops that rearrange data: applied to the label tensor as they are to the activation
MOVEMENT = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
    aten.unflatten.int, aten.transpose.int, aten.permute.default, aten.t.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.expand.default, aten.slice.Tensor,
    aten.select.int, aten.unbind.int,
}
#: ops that cut a tensor into parts of sizes fixed in the model's code (GPT-2's fused q/k/v ``split(split_size)``):
#: channels removed before them would shift every part, so the channels they cut are kept
FIXED_SIZE_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default}
#: ops whose output holds the input's values in place (copies, casts, dropout): the labels are the input's
SAME = {
    aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default, aten.dropout.default,
    aten.feature_dropout.default, aten.lift_fresh_copy.default, aten.to.dtype, aten.to.dtype_layout,
    aten._to_copy.default,
}
#: elementwise ops of one tensor (extra arguments are scalars): labels pass through
UNARY = {
    aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default, aten.silu_.default,
    aten.sigmoid.default, aten.tanh.default, aten.hardtanh.default, aten.hardtanh_.default, aten.leaky_relu.default,
    aten.hardswish.default, aten.hardsigmoid.default, aten.elu.default, aten.mish.default, aten.relu6.default,
    aten.abs.default, aten.neg.default, aten.exp.default, aten.clamp.default, aten.clamp_min.default,
    aten.pow.Tensor_Scalar, aten.sqrt.default, aten.square.default,
}
#: elementwise ops of two operands: a channel in both is one channel
BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add_.Tensor, aten.mul_.Tensor,
          aten.maximum.default, aten.minimum.default}
#: ops that reduce spatial positions of an NCHW tensor
POOLS = {aten.max_pool2d.default, aten.max_pool2d_with_indices.default, aten.avg_pool2d.default,
         aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default, aten.adaptive_max_pool2d.default}
REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default}
BATCH_NORMS = {aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default,
               aten._native_batch_norm_legit_functional.default, aten.native_batch_norm.default,
               aten.cudnn_batch_norm.default}

NONE = -1  # the label of a value that carries no prunable channel
#: why a group that produces the model's output stays: its width is the model's contract, not a choice
OUTPUT = "reaches the model output"


@dataclass
class Slice:
    """Where a group's channels live in one module: its output ``rows`` or its input ``columns``.

    ``indices[i]`` are the row / column indices of channel ``i`` of the group
    (one for a conv channel, a block for a flattened channel or an attention head).
    """

    module: str  # a module's name, or an attention core's (:attr:`ChannelGroups.attention`; role "heads")
    role: str  # "rows": producer or follower (BatchNorm, depthwise conv); "columns": consumer; "heads": attention core
    indices: list[list[int]]

    @property
    def width(self) -> int:
        return len(self.indices[0])


@dataclass
class ChannelGroup:
    """Channels that are kept or removed together, with every module slice they live in."""

    index: int
    channels: int
    slices: list[Slice]
    blocked: str = ""  # why the group cannot be pruned ("" when it can)
    followers: list[str] = field(default_factory=list)  # BatchNorm / depthwise modules that follow the channels

    @property
    def producers(self) -> list[str]:
        return [s.module for s in self.slices if s.role == "rows" and s.module not in self.followers]

    @property
    def consumers(self) -> list[str]:
        return [s.module for s in self.slices if s.role == "columns"]

    @property
    def module_slices(self) -> list[Slice]:
        """The slices that live in a module's weights (an attention core's "heads" slice has none)."""
        return [s for s in self.slices if s.role != "heads"]

    @property
    def is_output(self) -> bool:
        """True when the group is the model's output: its width is the model's contract, never a choice."""
        return self.blocked == OUTPUT

    @property
    def unit(self) -> int:
        """Rows per channel in the first producer (1 for a conv channel, the head size for a head)."""
        return next((s.width for s in self.slices if s.role == "rows"), 1)

    def describe(self) -> str:
        return (f"group {self.index}: {self.channels} channels of {', '.join(self.producers) or '?'}"
                + (f" → {', '.join(self.consumers)}" if self.consumers else ""))


@dataclass
class ChannelGroups:
    """The channel groups of a model, and the layers that stay dense with the reason."""

    groups: list[ChannelGroup]
    traced: bool
    reason: str = ""  # why tracing failed, when it did
    attention: dict[str, LayerSpec] = field(default_factory=dict)  # attention cores: sites of "heads" slices
    #: layers holding weights the traced forward never reads (a branch the example input does not take, a head
    #: used only in training): what they read when they do run is unknown
    unused: list[str] = field(default_factory=list)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.blocked]


class _Labels:
    """Union–find over channel labels, with the first reason each was blocked."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.blocked: dict[int, str] = {}

    def new(self, count: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return torch.arange(start, start + count)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in {(int(x), int(y)) for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist())}:
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def block(self, labels: torch.Tensor | None, reason: str) -> None:
        if labels is None:
            return
        for label in torch.unique(labels).tolist():
            if label != NONE:
                self.blocked.setdefault(int(label), reason)


@dataclass
class _Member:
    module: str
    role: str
    label: int
    index: int  # row or column


#: Layers that read a tensor's channels: pruning a tensor one of them reads unseen breaks it.
CHANNEL_READERS = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def channel_groups(model: nn.Module, example_input: Any) -> ChannelGroups:
    """The channel dependency groups of ``model`` on ``example_input`` (see the module docstring).

    A model ``torch.export`` cannot trace gets no groups, and the reason.
    """
    try:
        program = _export(model, example_input)
    except Exception as exc:  # export fails on data-dependent control flow and more
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ChannelGroups([], False, f"torch.export could not trace {type(model).__name__}: {first[:300]}")
    return _Analysis(model, program).run()


def _export(model: nn.Module, example_input: Any) -> Any:
    args, kwargs = ((), example_input) if isinstance(example_input, dict) else \
        ((tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)), {})
    with in_mode(model, training=False), torch.no_grad():
        return torch.export.export(model, args, kwargs, strict=False)


class _Analysis:
    """One pass over the exported graph, carrying label tensors."""

    def __init__(self, model: nn.Module, program: Any) -> None:
        self.model = model
        self.program = program
        sig = program.graph_signature
        self.param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.labels = _Labels()
        self.env: dict[str, Any] = {}
        self.members: list[_Member] = []
        self.calls: dict[str, int] = {}
        self.outputs_of: dict[str, torch.Tensor] = {}  # producer module → its row labels
        self.touched: dict[str, list[torch.Tensor]] = {}  # module → the labels of every call's input and output
        self.read_elsewhere: dict[str, str] = {}  # layer → an op that reads its weight or bias outside its own call
        self.sites: dict[str, LayerSpec] = {}  # attention cores, priced with the head groups

    def run(self) -> ChannelGroups:
        for node in self.program.graph.nodes:
            if node.op == "call_function":
                self.env[node.name] = self._call(node)
            elif node.op == "output":
                for value in _flat(node.args):
                    self.labels.block(self._get(value), OUTPUT)
        for name, count in self.calls.items():
            if count > 1:  # every call's input columns and output rows: a channel of one call is one of all
                for labels in self.touched.get(name, []):
                    self.labels.block(labels, f"{name} is called {count} times (shared layer)")
        for name, where in self.read_elsewhere.items():  # a pruned weight would reach that op in another shape
            for labels in self.touched.get(name, []):
                self.labels.block(labels, f"the weight of {name} is also read by {where}")
        return ChannelGroups(self._groups(), True, attention=self.sites, unused=self._unused())

    def _unused(self) -> list[str]:
        """Linear, conv and norm layers whose weight no node of the traced graph reads."""
        unused = [self.param_of[n.name] for n in self.program.graph.nodes
                  if n.op == "placeholder" and n.name in self.param_of and not n.users]
        layers = dict.fromkeys(name.rpartition(".")[0] for name in unused if name.endswith(".weight"))
        modules = dict(self.model.named_modules())
        return [n for n in layers if isinstance(modules.get(n), CHANNEL_READERS)]

    # ------------------------------------------------------------- helpers
    def _get(self, value: Any) -> torch.Tensor | None:
        if isinstance(value, torch.fx.Node):
            found = self.env.get(value.name)
            return found if isinstance(found, torch.Tensor) else None
        return None

    def _module(self, value: Any) -> str | None:
        """The module owning the parameter a graph input stands for ('conv1' for 'conv1.weight')."""
        if isinstance(value, torch.fx.Node) and value.name in self.param_of:
            return self.param_of[value.name].rpartition(".")[0]
        return None

    def _path(self, node: torch.fx.Node) -> str:
        """The name of the module whose forward ran ``node`` ("" at the top level)."""
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def _where(self, node: torch.fx.Node) -> str:
        path = self._path(node)
        return f"{str(node.target).replace('aten.', '')}" + (f" in {path}" if path else "")

    def _shape(self, node: torch.fx.Node) -> tuple[int, ...] | None:
        val = node.meta.get("val")
        return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None

    def _block_inputs(self, node: torch.fx.Node, reason: str) -> None:
        for value in _flat((node.args, node.kwargs)):
            self.labels.block(self._get(value), reason)

    # ----------------------------------------------------------- dispatch
    def _call(self, node: torch.fx.Node) -> Any:
        target = node.target
        self._note_weight_reads(node)
        inputs = [self._get(v) for v in _flat((node.args, node.kwargs))]
        if target in LAYERS:
            return self._layer(node)
        if target is _getitem:
            source = self.env.get(node.args[0].name)
            return source[node.args[1]] if isinstance(source, (list, tuple)) else None
        if all(x is None for x in inputs):
            return None
        if target in BATCH_NORMS:
            return self._batch_norm(node)
        if target in FIXED_SIZE_SPLITS:
            self._block_inputs(node, f"cut into parts of fixed size by {self._where(node)}")
            return None
        if target in PICKS:
            self._block_fixed_pick(node)
        if target in MOVEMENT:
            return node.target(*(self._label_arg(a) for a in node.args), **node.kwargs)
        if target in SAME or target in UNARY:
            return self._get(node.args[0])
        if target in BINARY:
            return self._binary(node)
        if target is aten.cat.default:
            return self._cat(node)
        if target in POOLS or target in REDUCTIONS:
            return self._reduce(node)
        if target is aten.scaled_dot_product_attention.default:
            return self._attention(node)
        if target is aten.layer_norm.default:
            self._block_inputs(node, f"normalised together by {self._where(node)}")
            return None
        self._block_inputs(node, f"read by {self._where(node)}, which lcpress cannot follow channel by channel")
        return None

    def _layer(self, node: torch.fx.Node) -> torch.Tensor | None:
        name = self._module(node.args[1])
        x = self._get(node.args[0])
        module = get_module(self.model, name) if name is not None else None
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            self.labels.block(x, f"read by {self._where(node)}, not an nn.Linear / nn.Conv2d")
            return None
        problem = realization_problem(module)
        if problem:
            axis = -1 if isinstance(module, nn.Linear) else 1
            return self._kept_layer(module, x, self._shape(node), axis, f"{name}: {problem.split(';')[0]}")
        self.calls[name] = self.calls.get(name, 0) + 1
        out = self._layer_call(node, name, module, x)
        self.touched.setdefault(name, []).extend(t for t in (x, out) if t is not None)
        return out

    def _kept_layer(self, module: nn.Module, x: torch.Tensor | None, shape: tuple[int, ...] | None, axis: int,
                    who: str) -> torch.Tensor:
        """A layer whose channels all stay: the labels it reads and its output rows are blocked, naming ``who``."""
        self.labels.block(x, f"read by {who}")
        rows = self.labels.new(module.weight.shape[0])
        self.labels.block(rows, f"output of {who}")
        return _along(rows, shape, axis)

    def _layer_call(self, node: torch.fx.Node, name: str, module: nn.Module, x: torch.Tensor | None) -> torch.Tensor | None:
        axis = -1 if isinstance(module, nn.Linear) else 1
        shape = self._shape(node)
        groups = module.groups if isinstance(module, nn.Conv2d) else 1
        if groups > 1:
            if groups == module.in_channels == module.out_channels and x is not None:
                return self._depthwise(name, x, shape)
            return self._kept_layer(module, x, shape, axis, f"the grouped conv {name} (groups={groups})")
        if x is not None:
            self._columns(name, x, axis)
        rows = self.labels.new(module.weight.shape[0])
        self.outputs_of[name] = rows
        self.members.extend(_Member(name, "rows", int(label), r) for r, label in enumerate(rows.tolist()))
        return _along(rows, shape, axis)

    def _note_weight_reads(self, node: torch.fx.Node) -> None:
        """Remember a layer's weight or bias read by anything but that layer's own call (``F.linear(h, a.weight.t())``)."""
        own = {1, 2} if node.target in LAYERS else set()
        for i, value in enumerate(node.args):
            name = self._module(value) if i not in own else None
            if name is not None and isinstance(get_module(self.model, name), (nn.Linear, nn.Conv2d)):
                self.read_elsewhere.setdefault(name, self._where(node))

    def _block_fixed_pick(self, node: torch.fx.Node) -> None:
        """``x[:, :16]``, ``x[:, ::2]``, ``x[:, 3]`` along an axis that carries channels pick positions written in the
        model's code: once channels are removed, the same positions hold other channels, so those channels stay."""
        x = self._get(node.args[0])
        if x is None:
            return
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % x.dim()
        if node.target is aten.slice.Tensor:
            start, end, step = (list(node.args[2:5]) + [None] * 3)[:3]
            whole = (start or 0) == 0 and (end is None or end >= x.shape[dim]) and (step or 1) == 1
            if whole:
                return
        if bool((x != x.narrow(dim, 0, 1)).any()):
            self.labels.block(x, f"picked at fixed positions by {self._where(node)}")

    def _columns(self, name: str, x: torch.Tensor, axis: int) -> None:
        """Record which input columns of ``name`` carry which channel; mixed columns block their labels."""
        cols = x.movedim(axis, -1).reshape(-1, x.shape[axis])
        first = cols[0]
        mixed = (cols != first).any(0)
        if bool(mixed.any()):
            self.labels.block(cols[:, mixed], f"columns of {name} mix several channels")
        for c, label in enumerate(first.tolist()):
            if label != NONE and not bool(mixed[c]):
                self.members.append(_Member(name, "columns", int(label), c))

    def _depthwise(self, name: str, x: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
        """A depthwise conv follows its input channels: row c is part of channel c."""
        per_channel = _constant_along(x, 1)
        if per_channel is None:
            self.labels.block(x, f"input of {name} mixes channels")
            return None
        self.members.extend(_Member(name, "rows", int(label), c) for c, label in enumerate(per_channel.tolist())
                            if label != NONE)
        self.outputs_of[name] = per_channel
        return _along(per_channel, shape, 1)

    def _batch_norm(self, node: torch.fx.Node) -> Any:
        x = self._get(node.args[0])
        name = self._module(node.args[1]) or self._module(node.args[3])
        per_channel = _constant_along(x, 1)
        if name is None or per_channel is None:
            self.labels.block(x, f"normalised by {self._where(node)}")
            return None
        self.members.extend(_Member(name, "rows", int(label), c) for c, label in enumerate(per_channel.tolist())
                            if label != NONE)
        out = x
        return (out, None, None) if node.target is not aten.batch_norm.default else out

    def _label_arg(self, value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            found = self.env.get(value.name)
            if found is None:
                shape = self._shape(value)
                return torch.full(shape, NONE) if shape is not None else None
            return found
        if isinstance(value, (list, tuple)):
            return type(value)(self._label_arg(v) for v in value)
        return value

    def _binary(self, node: torch.fx.Node) -> torch.Tensor | None:
        shape = self._shape(node)
        a, b = (self._get(v) for v in node.args[:2])
        if a is not None and b is not None:
            a, b = torch.broadcast_tensors(a, b)
            both = (a != NONE) & (b != NONE)
            self.labels.union(a[both], b[both])
            one_sided = (a == NONE) != (b == NONE)
            if bool(one_sided.any()):
                self.labels.block(torch.where(a == NONE, b, a)[one_sided], f"meets unlabelled values in {self._where(node)}")
            return torch.where(a == NONE, b, a).expand(shape).clone()
        labelled = a if a is not None else b
        other = node.args[1] if a is not None else node.args[0]
        if isinstance(other, torch.fx.Node):
            other_shape = self._shape(other) or ()
            if _varies_where(labelled, other_shape):
                what = "a tensor that is not pruned (a residual stream or a parameter)"
                self.labels.block(labelled, f"combined with {what} in {self._where(node)}")
                return None
        return labelled.expand(shape).clone() if shape is not None else labelled

    def _cat(self, node: torch.fx.Node) -> torch.Tensor:
        parts = self._label_arg(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return torch.cat(parts, dim)

    def _reduce(self, node: torch.fx.Node) -> Any:
        x = self._get(node.args[0])
        shape = self._shape(node)
        if node.target in POOLS:
            per_channel = _constant_along(x, 1)
            if per_channel is None or shape is None:
                self.labels.block(x, f"pooled across channels in {self._where(node)}")
                return None
            out = _along(per_channel, shape, 1)
            return (out, None) if node.target in (aten.max_pool2d_with_indices.default,
                                                  aten.adaptive_max_pool2d.default) else out
        dims = node.args[1] if len(node.args) > 1 else None
        dims = list(range(x.dim())) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        dims = [d % x.dim() for d in dims]
        if any(bool((x != x.select(d, 0).unsqueeze(d)).any()) for d in dims):
            self.labels.block(x, f"reduced across channels in {self._where(node)}")
            return None
        keep = len(node.args) > 2 and bool(node.args[2])
        out = x
        for d in sorted(dims, reverse=True):
            out = out.select(d, 0) if not keep else out.narrow(d, 0, 1)
        return out.reshape(shape) if shape is not None else out

    def _attention(self, node: torch.fx.Node) -> torch.Tensor | None:
        """Heads: q, k and v rows of one head, and the output's columns of it, are one channel.

        The attention products shrink with the heads too: a self-attention call
        (as many keys as queries) becomes a priced site, one head per channel.
        """
        q, k, v = (self._get(a) for a in node.args[:3])
        if any(t is None for t in (q, k, v)) or q.dim() != 4:
            self._block_inputs(node, f"attention in {self._where(node)} on projections lcpress cannot trace")
            return None
        site = self._site(node)
        for head in range(q.shape[1]):
            labels = torch.cat([t[:, head].reshape(-1) for t in (q, k, v)])
            labels = labels[labels != NONE]
            if labels.numel():
                self.labels.union(labels[:1].expand(labels.numel()), labels)
                if site is not None:
                    self.members.append(_Member(site, "heads", int(labels[0]), head))
        return v.expand(self._shape(node)).clone()

    def _site(self, node: torch.fx.Node) -> str | None:
        """Name and record the attention core of ``node`` as a priced site (None: cross-attention, not priced)."""
        q, k, v = (self._shape(a) for a in node.args[:3])
        if q is None or k is None or v is None or q[2] != k[2]:
            return None
        path = self._path(node)
        base = f"{path}.attention_core" if path else "attention_core"
        name, n = base, 1
        while name in self.sites:
            n += 1
            name = f"{base}{n}"
        batch, heads, length, size = q
        self.sites[name] = LayerSpec("attention", heads * size, heads * v[3], (batch, length, heads * size),
                                     groups=heads, bias=False)
        return name

    # ------------------------------------------------------------- groups
    def _groups(self) -> list[ChannelGroup]:
        find = self.labels.find
        blocked = {}
        for label, reason in self.labels.blocked.items():
            blocked.setdefault(find(label), reason)
        by_root: dict[int, dict[tuple[str, str], list[int]]] = {}
        for m in self.members:
            by_root.setdefault(find(m.label), {}).setdefault((m.module, m.role), []).append(m.index)
        signature: dict[tuple, list[int]] = {}
        for root, slots in by_root.items():
            if not any(role == "rows" for _, role in slots):
                continue
            key = tuple(sorted((module, role, len(ix)) for (module, role), ix in slots.items()))
            signature.setdefault(key, []).append(root)
        groups = []
        for key, roots in signature.items():
            roots.sort(key=lambda r: min(min(ix) for (_, role), ix in by_root[r].items() if role == "rows"))
            slices = [Slice(module, role, [sorted(by_root[r][(module, role)]) for r in roots])
                      for module, role, _ in sorted(key, key=lambda k: (k[1] != "rows", k[0]))]
            reasons = [blocked[r] for r in roots if r in blocked]
            groups.append(ChannelGroup(0, len(roots), slices, reasons[0] if reasons else ""))
        order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        groups.sort(key=lambda g: order.get(g.slices[0].module, len(order)))
        for i, g in enumerate(groups):
            g.index = i
            g.followers = [s.module for s in g.slices if s.role == "rows" and self._follows(s.module)]
        return groups

    def _follows(self, name: str) -> bool:
        module = get_module(self.model, name)
        return not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) > 1


_getitem = __import__("operator").getitem


def _flat(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flat(v)
    else:
        yield value


def _along(labels: torch.Tensor, shape: tuple[int, ...] | None, axis: int) -> torch.Tensor:
    """A label tensor of ``shape`` whose values along ``axis`` are ``labels``."""
    if shape is None:
        raise LcpressError("the traced graph holds no shape for a layer's output")
    view = [1] * len(shape)
    view[axis] = labels.numel()
    return labels.reshape(view).expand(shape).clone()


def _constant_along(x: torch.Tensor | None, axis: int) -> torch.Tensor | None:
    """The one label per index of ``axis`` when every other position agrees, else None."""
    if x is None or x.dim() <= axis:
        return None
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat[:, 0].clone() if bool((flat == flat[:, :1]).all()) else None


def _varies_where(labels: torch.Tensor, other_shape: tuple[int, ...]) -> bool:
    """True when a tensor of ``other_shape`` is not constant along an axis the labels vary on."""
    padded = (1,) * (labels.dim() - len(other_shape)) + tuple(other_shape)
    for d in range(labels.dim()):
        if padded[d] > 1 and labels.shape[d] > 1 and bool((labels != labels.narrow(d, 0, 1)).any()):
            return True
    return False


def kept_sizes(group: ChannelGroup, multiple: int) -> list[int]:
    """Candidate kept counts: multiples of ``multiple`` layer widths (a head of 32 rows counts 32), and all."""
    step = max(1, math.ceil(multiple / group.unit))
    sizes = list(range(step, group.channels, step))
    return sizes + [group.channels]


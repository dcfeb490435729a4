"""What a layer is (:class:`LayerSpec`) and what it can become (:class:`Form`).

Cost models price *forms*, not schemes. A form says which primitive layers
(Linear / Conv2d / Embedding, with exact shapes) it executes; params, FLOPs and measured
latency are all computed from that list. A new scheme therefore gets every cost
model for free as soon as its form can list its primitives — the Tucker-2 form
of a third-party plugin is three convolutions, and FLOPs/params/latency follow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from lcpress.linalg.matrices import Shape

Pair = tuple[int, int]


@dataclass(frozen=True)
class LayerSpec:
    """One Linear, Conv2d or Embedding layer as traced on the example input.

    ``input_shape`` is the shape of one call's input, batch included;
    ``calls`` counts how often the forward pass runs the layer (a shared layer
    costs FLOPs and time on every call).

    ``kind="attention"`` is the parameter-free core of multi-head
    self-attention (QKᵀ, softmax, AV over ``groups`` heads): ``in_channels``
    is the query/key width (heads × head size), ``out_channels`` the value
    width, ``input_shape`` the queries' ``(batch, sequence, in_channels)``.
    Pruning attention heads shrinks it as it shrinks the projections, so the
    channel-group scheme prices it with them (see :mod:`lcpress.core.channels`).

    ``kind="embedding"`` is a lookup table: ``in_channels`` rows (the vocabulary), ``out_channels`` wide,
    ``input_shape`` the shape of the index tensor. Its weight is stored rows first, (vocabulary, width), and a
    lookup multiplies nothing: 0 FLOPs.

    ``tied``: the layer's weight is the very tensor of a layer traced before it (a language model's output
    layer tied to its token table). Both run, so it costs FLOPs and time as any layer does; its weight is
    stored once, with the other layer, so its dense form stores only its bias. Tied layers are never
    compressed (see :mod:`lcpress.core.plan`), so only the dense form needs to know.
    """

    kind: Literal["linear", "conv2d", "attention", "embedding"]
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]
    kernel_size: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True
    calls: int = 1
    tied: bool = False

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":  # groups > 1: a block-diagonal Linear (grouped realizations)
            return (self.out_channels, self.in_channels // self.groups)
        if self.kind == "embedding":
            return (self.in_channels, self.out_channels)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.kind == "embedding":  # one row per index
            return (*self.input_shape, self.out_channels)
        if self.kind != "conv2d":
            return (*self.input_shape[:-1], self.out_channels)
        batch, _, height, width = self.input_shape
        out_hw = [
            (size + 2 * pad - dil * (k - 1) - 1) // st + 1
            for size, pad, dil, k, st in zip(
                (height, width), self.padding, self.dilation, self.kernel_size, self.stride
            )
        ]
        return (batch, self.out_channels, *out_hw)

    @property
    def positions(self) -> int:
        """Output positions per call: rows of the matmul this layer performs."""
        out = self.output_shape
        if self.kind != "conv2d":
            return math.prod(out[:-1])
        return out[0] * out[2] * out[3]

    @property
    def params(self) -> int:
        if self.kind == "attention":
            return 0
        return math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)

    @property
    def flops(self) -> int:
        """FLOPs of all calls, counted as ``torch.utils.flop_counter`` counts them.

        Two per multiply–accumulate; the bias add is not counted (FlopCounterMode
        counts addmm and convolution by their matmul alone). Attention: QKᵀ and
        AV, each query position against every key position, softmax not counted
        (as FlopCounterMode counts ``scaled_dot_product_attention``).
        """
        if self.kind == "attention":
            keys = self.input_shape[-2]
            return 2 * self.positions * keys * (self.in_channels + self.out_channels) * self.calls
        if self.kind == "embedding":  # a gather (FlopCounterMode counts none)
            return 0
        macs_per_position = math.prod(self.weight_shape)
        return 2 * self.positions * macs_per_position * self.calls

    def to_dict(self) -> dict[str, Any]:
        """JSON fields; ``tied`` only where it is set, so untied specs read as they did before it existed."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k != "tied" or v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields})

    def with_(self, **changes: Any) -> "LayerSpec":
        return dataclasses.replace(self, **changes)


class Form:
    """A compressed form a layer can take; subclasses are frozen dataclasses.

    Subclasses implement :meth:`primitives`. Forms must be hashable (cost
    models cache prices by ``(spec, form)``).
    """

    kind: ClassVar[str] = "form"
    #: True when the last primitive computes only some of the layer's output channels and the
    #: others are constants put back in place (row pruning, :class:`lcpress.nn.modules.ScatterChannels`).
    fills_outputs: ClassVar[bool] = False

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        """The layers this form executes, in order, with their exact shapes."""
        raise NotImplementedError

    def branches(self, spec: LayerSpec) -> tuple[tuple[LayerSpec, ...], ...]:
        """Parallel chains of primitives whose outputs are summed; default: one chain, :meth:`primitives`.

        Each chain reads the layer's input and produces its output. Between
        consecutive primitives the activation may be reshaped (a free view,
        same number of values), as in a block-interleaved low-rank part.
        Forms made of parallel parts (additive combinations) override this and
        return the concatenated chains from :meth:`primitives`.
        """
        return (self.primitives(spec),)

    def param_count(self, spec: LayerSpec) -> int:
        """Numbers stored. Sparse or quantized forms override this."""
        return sum(p.params for p in self.primitives(spec))

    def storage_bits(self, spec: LayerSpec, dtype_bits: int = 32) -> int:
        """Bits stored. Forms with codebooks or index arrays override this."""
        return self.param_count(spec) * dtype_bits

    def describe(self) -> str:
        """Short human text for tables ("rank 16", "dense")."""
        return self.kind

    def report_fields(self) -> dict[str, Any]:
        """Columns this form adds to per-layer tables (``rank``, ``nonzeros``, ``bits`` …).

        Default: the form dataclass's plain fields. Forms made of parts
        (additive combinations) prefix each part's fields with its number.
        """
        if not dataclasses.is_dataclass(self):
            return {}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}


@dataclass(frozen=True)
class Dense(Form):
    """The layer left as it is. Always a candidate of every selecting C step."""

    kind: ClassVar[str] = "dense"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return (spec,)

    def param_count(self, spec: LayerSpec) -> int:
        """A tied layer's weight is stored with the layer it is tied to: it stores its bias alone."""
        if spec.tied:
            return spec.out_channels if spec.bias else 0
        return super().param_count(spec)

    def describe(self) -> str:
        return "dense"


@dataclass(frozen=True)
class LowRank(Form):
    """Two thin layers of rank ``rank``.

    ``shape="channel"``: a k×k conv in→r then a 1×1 conv r→out (Linear: in→r→out).
    ``shape="spatial"``: a kh×1 conv in→r then a 1×kw conv r→out.
    ``shape="input"``: a 1×1 conv in→r then the kh×kw conv r→out (what AIMET's weight SVD builds). The same
    FLOPs as ``channel`` for a square layer, but the kh×kw conv unfolds r input channels instead of ``in``,
    which is what a CPU convolution spends much of its time on at small batch sizes.
    """

    rank: int
    shape: Shape = "channel"
    kind: ClassVar[str] = "low_rank"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        r = self.rank
        if spec.kind == "embedding":  # a table r wide, then a Linear r→width: E = A·B
            first = spec.with_(out_channels=r)
            return (first, LayerSpec("linear", r, spec.out_channels, first.output_shape, bias=False, calls=spec.calls))
        if spec.kind == "linear":
            first = spec.with_(out_channels=r, bias=False)
            second = spec.with_(in_channels=r, input_shape=first.output_shape)
            return (first, second)
        if spec.groups != 1:
            raise ValueError("low-rank forms need groups=1 convolutions")
        if self.shape == "channel":
            first = spec.with_(out_channels=r, bias=False)
            second = spec.with_(
                in_channels=r, input_shape=first.output_shape, kernel_size=(1, 1),
                stride=(1, 1), padding=(0, 0), dilation=(1, 1),
            )
            return (first, second)
        if self.shape == "input":
            first = spec.with_(out_channels=r, bias=False, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0),
                               dilation=(1, 1))
            return (first, spec.with_(in_channels=r, input_shape=first.output_shape))
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel_size, spec.stride, spec.padding, spec.dilation
        first = spec.with_(
            out_channels=r, bias=False, kernel_size=(kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1)
        )
        second = spec.with_(
            in_channels=r, input_shape=first.output_shape, kernel_size=(1, kw),
            stride=(1, sw), padding=(0, pw), dilation=(1, dw),
        )
        return (first, second)

    def describe(self) -> str:
        return f"rank {self.rank}" + (f" ({self.shape})" if self.shape != "channel" else "")


@dataclass(frozen=True)
class Resized(Form):
    """The layer with fewer output channels and/or input columns: one smaller layer of the same kind.

    What channel pruning makes of a producer (fewer outputs), a consumer
    (fewer inputs; features, after a flatten) or a depthwise conv that follows
    its channels (both, and as many groups) — priced by every cost model as the
    smaller layer it is.
    """

    out_channels: int
    in_channels: int
    kind: ClassVar[str] = "resized"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return (resized(spec, self.out_channels, self.in_channels),)

    def describe(self) -> str:
        return f"{self.in_channels}→{self.out_channels}"


def resized(spec: LayerSpec, out_channels: int, in_channels: int) -> LayerSpec:
    """``spec`` with other channel counts (its input shape follows; a depthwise conv keeps groups = channels).

    An attention core keeps its head size: fewer channels are fewer heads.
    """
    depthwise = spec.groups > 1 and spec.groups == spec.in_channels == spec.out_channels
    shape = list(spec.input_shape)
    shape[1 if spec.kind == "conv2d" else -1] = in_channels
    groups = in_channels if depthwise else spec.groups
    if spec.kind == "attention":
        groups = in_channels // (spec.in_channels // spec.groups)
    return spec.with_(out_channels=out_channels, in_channels=in_channels, input_shape=tuple(shape), groups=groups)


def form_to_dict(form: Form) -> dict[str, Any]:
    """JSON description of a form (for manifests and reports); forms made of parts list each part's."""
    data: dict[str, Any] = {"kind": form.kind}
    for f in dataclasses.fields(form) if dataclasses.is_dataclass(form) else ():
        value = getattr(form, f.name)
        if isinstance(value, Form):
            value = form_to_dict(value)
        elif isinstance(value, tuple):
            value = [form_to_dict(v) if isinstance(v, Form) else v for v in value]
        data[f.name] = value
    return data

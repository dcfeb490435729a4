"""Layers that are stored small and run dense: quantized and sparse realizations.

A codebook-quantized or unstructured-sparse weight has no faster kernel on a
CPU or GPU in plain PyTorch, but it can be *stored* in a fraction of the
bits. :class:`DecodedLinear`, :class:`DecodedConv2d` and :class:`DecodedEmbedding` hold one or more
*codecs* (:class:`CodebookWeight`: packed indices + codebook;
:class:`SparseWeight`: non-zero values + a packed mask or index list;
:class:`DenseWeight`) whose payloads are the module's buffers — so the state
dict and the saved file are as small as the storage cost model says — and
compute with the sum of the decoded weights. The dense weight is decoded
once and cached until a payload changes (a ``load_state_dict``, say).

Several codecs in one layer are an additive combination that runs as one
dense matrix product: quantized + sparse costs one GEMM, not two.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lcpress.nn.bitpack import bits_for, pack_bits, packed_size, unpack_bits


class WeightCodec(nn.Module):
    """A stored representation of a weight tensor; :meth:`decode` rebuilds it."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def decode(self) -> torch.Tensor:
        raise NotImplementedError

    def storage_bits(self) -> int:
        """Bits of the payload (what the file holds for this weight)."""
        return sum(b.numel() * b.element_size() * 8 for b in self.buffers())


class DenseWeight(WeightCodec):
    """A weight stored as it is (a part of an additive combination with no compact form)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(shape)
        self.register_buffer("values", torch.zeros(self.shape))

    @classmethod
    def of(cls, weight: torch.Tensor) -> "DenseWeight":
        codec = cls(weight.shape)
        codec.values = weight.detach().clone()
        return codec

    def decode(self) -> torch.Tensor:
        return self.values

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class CodebookWeight(WeightCodec):
    """Every weight is one of ``entries`` codebook values; indices packed at ⌈log2 entries⌉ bits."""

    def __init__(self, shape: Sequence[int], entries: int) -> None:
        super().__init__(shape)
        self.entries = int(entries)
        self.bits = bits_for(self.entries)
        self.register_buffer("codebook", torch.zeros(self.entries))
        self.register_buffer("codes", torch.zeros(packed_size(self.numel, self.bits), dtype=torch.uint8))

    @classmethod
    def of(cls, codebook: torch.Tensor, codes: torch.Tensor, shape: Sequence[int]) -> "CodebookWeight":
        codec = cls(shape, codebook.numel())
        codec.codebook = codebook.detach().reshape(-1).clone()
        codec.codes = pack_bits(codes, codec.bits).to(codebook.device)
        return codec

    def decode(self) -> torch.Tensor:
        return self.codebook[unpack_bits(self.codes, self.bits, self.numel)].reshape(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, entries={self.entries}, bits={self.bits}"


class SparseWeight(WeightCodec):
    """Non-zero values plus their positions: a packed 1-bit mask or packed indices, whichever is smaller."""

    def __init__(self, shape: Sequence[int], nonzeros: int) -> None:
        super().__init__(shape)
        self.nonzeros = int(nonzeros)
        self.index_bits = sparse_index_bits(self.numel, self.nonzeros)
        self.uses_mask = self.index_bits == self.numel
        width = bits_for(self.numel)
        size = packed_size(self.numel, 1) if self.uses_mask else packed_size(self.nonzeros, width)
        self.register_buffer("values", torch.zeros(self.nonzeros))
        self.register_buffer("positions", torch.zeros(size, dtype=torch.uint8))

    @classmethod
    def of(cls, weight: torch.Tensor) -> "SparseWeight":
        flat = weight.detach().reshape(-1)
        index = torch.nonzero(flat, as_tuple=True)[0]
        codec = cls(weight.shape, index.numel())
        codec.values = flat[index].clone()
        codec.set_positions(flat != 0)
        return codec

    def set_positions(self, kept: torch.Tensor) -> None:
        """Store where the non-zeros are (``kept``: a flat bool mask) as a packed mask or index list."""
        if self.uses_mask:
            self.positions = pack_bits(kept.to(torch.int64), 1).to(kept.device)
        else:
            self.positions = pack_bits(torch.nonzero(kept, as_tuple=True)[0], bits_for(self.numel)).to(kept.device)

    def index(self) -> torch.Tensor:
        if self.uses_mask:
            return torch.nonzero(unpack_bits(self.positions, 1, self.numel), as_tuple=True)[0]
        return unpack_bits(self.positions, bits_for(self.numel), self.nonzeros)

    def decode(self) -> torch.Tensor:
        out = self.values.new_zeros(self.numel)
        out[self.index()] = self.values
        return out.reshape(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nonzeros={self.nonzeros}, {'mask' if self.uses_mask else 'indices'}"


class SparseCodebookWeight(SparseWeight):
    """A sparse weight whose non-zero values are codebook entries: positions + packed codes + codebook.

    What pruning followed by quantization of the remaining weights stores.
    """

    def __init__(self, shape: Sequence[int], nonzeros: int, entries: int) -> None:
        super().__init__(shape, nonzeros)
        del self.values
        self.entries = int(entries)
        self.bits = bits_for(self.entries)
        self.register_buffer("codebook", torch.zeros(self.entries))
        self.register_buffer("codes", torch.zeros(packed_size(self.nonzeros, self.bits), dtype=torch.uint8))

    @classmethod
    def of_codes(cls, codebook: torch.Tensor, codes: torch.Tensor) -> "SparseCodebookWeight":
        """From a codebook and per-weight codes, where code −1 marks a zero weight."""
        flat = codes.reshape(-1)
        index = torch.nonzero(flat >= 0, as_tuple=True)[0]
        codec = cls(codes.shape, index.numel(), codebook.numel())
        codec.codebook = codebook.detach().reshape(-1).clone()
        codec.codes = pack_bits(flat[index], codec.bits).to(codebook.device)
        codec.set_positions(flat >= 0)
        return codec

    def decode(self) -> torch.Tensor:
        out = self.codebook.new_zeros(self.numel)
        out[self.index()] = self.codebook[unpack_bits(self.codes, self.bits, self.nonzeros)]
        return out.reshape(self.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", entries={self.entries}"


def sparse_index_bits(numel: int, nonzeros: int) -> int:
    """Bits to store where ``nonzeros`` of ``numel`` values are: a mask, or an index list if smaller."""
    return min(numel, nonzeros * bits_for(numel))



def _compiling() -> bool:
    """Whether torch.compile is tracing this call (torch ≥ 2.3 says so; earlier ones never trace through here)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False

class DecodedLayer(nn.Module):
    """Base of the layers stored as codecs: the codecs, a bias, and the cached sum of the decoded weights.

    Subclasses compute their layer's function with :meth:`weight_now` and give the plain layer they compute
    with ``to_dense()``.
    """

    codecs: nn.ModuleList

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        """The shape of the weight every codec must decode to (the plain layer's); None: a subclass that does not say."""
        return None

    def _init_decoded(self, out_channels: int, bias: bool) -> None:
        self.codecs = nn.ModuleList()
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    def weight_now(self) -> torch.Tensor:
        """The dense weight (decoded once, re-decoded only when a payload changed).

        Under ``torch.jit.trace`` it is decoded at every call, so every traced invocation records the same
        graph (the decode from the stored payloads, which the traced module keeps as small as this one).
        Under ``torch.compile`` too: the cache's key (buffer ids and versions) would be a guard per layer, and
        dynamo would recompile for every layer until its recompile limit.
        """
        if torch.jit.is_tracing() or _compiling():
            return self._decoded()
        key = tuple(b._version for c in self.codecs for b in c.buffers()) + tuple(
            id(b) for c in self.codecs for b in c.buffers())
        if self._cache is None or self._cache[0] != key:
            if torch.is_inference_mode_enabled():  # an inference tensor cached here would break autograd later
                return self._decoded()
            self._cache = (key, self._decoded())
        return self._cache[1]

    @property
    def weight(self) -> torch.Tensor:
        """The decoded dense weight, read-only: code that reads ``layer.weight`` (shapes, devices, tying checks)
        keeps working after quantization or pruning. The layer stores its codecs, not this tensor."""
        return self.weight_now()

    def _decoded(self) -> torch.Tensor:
        """The sum of the codecs' decoded weights, in the bias's dtype where there is a bias."""
        weight = sum(c.decode() for c in self.codecs)
        return weight.to(self.bias.dtype) if self.bias is not None else weight

    def storage_bits(self) -> int:
        bias_bits = 0 if self.bias is None else self.bias.numel() * self.bias.element_size() * 8
        return sum(c.storage_bits() for c in self.codecs) + bias_bits

    @torch.no_grad()
    def _filled(self, dense: nn.Module) -> nn.Module:
        """``dense`` holding this layer's decoded weight and its bias, in this layer's mode."""
        dense.weight.copy_(self.weight_now())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense.train(self.training)


class DecodedLinear(DecodedLayer):
    """A Linear layer whose weight is the sum of its codecs' decoded weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_decoded(out_features, bias)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    @classmethod
    def of(cls, linear: nn.Linear, codecs: Sequence[WeightCodec]) -> "DecodedLinear":
        new = cls(linear.in_features, linear.out_features, linear.bias is not None)
        new.codecs.extend(codecs)
        new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)  # before the bias: float64 stays exact
        if linear.bias is not None:
            with torch.no_grad():
                new.bias.copy_(linear.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_now(), self.bias)

    def to_dense(self) -> nn.Linear:
        """The plain Linear this layer computes, holding the decoded weight (for ONNX, say)."""
        weight = self.weight_now()
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, weight.device, weight.dtype)
        return self._filled(dense)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class DecodedConv2d(DecodedLayer):
    """A Conv2d layer whose weight is the sum of its codecs' decoded weights (same arguments as nn.Conv2d)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, False,
                             padding_mode, device="meta")
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(template, name))
        self._init_decoded(out_channels, bias)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @classmethod
    def of(cls, conv: nn.Conv2d, codecs: Sequence[WeightCodec]) -> "DecodedConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode)
        new.codecs.extend(codecs)
        new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)  # before the bias: float64 stays exact
        if conv.bias is not None:
            with torch.no_grad():
                new.bias.copy_(conv.bias)
        return new

    def to_dense(self) -> nn.Conv2d:
        """The plain Conv2d this layer computes, holding the decoded weight (for ONNX, say)."""
        weight = self.weight_now()
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, self.groups, self.bias is not None, self.padding_mode, weight.device,
                          weight.dtype)
        return self._filled(dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_now()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}")


class DecodedEmbedding(DecodedLayer):
    """An Embedding whose table is the sum of its codecs' decoded tables (a lookup into the cached table)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_decoded(embedding_dim, False)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.num_embeddings, self.embedding_dim)

    @classmethod
    def of(cls, embedding: nn.Embedding, codecs: Sequence[WeightCodec]) -> "DecodedEmbedding":
        new = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        new.codecs.extend(codecs)
        return new.to(device=embedding.weight.device, dtype=embedding.weight.dtype)  # the codecs' floats too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.weight_now(), self.padding_idx)

    def to_dense(self) -> nn.Embedding:
        """The plain Embedding this layer computes, holding the decoded table (for ONNX, say)."""
        weight = self.weight_now()
        dense = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device=weight.device,
                             dtype=weight.dtype)
        return self._filled(dense)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


def decoded(module: nn.Module, codecs: Sequence[WeightCodec]) -> nn.Module:
    """The Decoded counterpart of a Linear, Conv2d or Embedding layer, holding ``codecs`` (and its bias)."""
    if isinstance(module, nn.Linear):
        return DecodedLinear.of(module, codecs)
    if isinstance(module, nn.Conv2d):
        return DecodedConv2d.of(module, codecs)
    if isinstance(module, nn.Embedding):
        return DecodedEmbedding.of(module, codecs)
    raise TypeError(f"cannot store a {type(module).__name__} in packed form (Linear, Conv2d and Embedding only)")

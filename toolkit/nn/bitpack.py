"""Bit-packing of small integers, so stored models are as small as their cost says.

A codebook index of a 4-entry quantizer needs 2 bits, a sparse mask 1 bit per
weight. :func:`pack_bits` stores ``count`` unsigned integers of ``width`` bits in
``ceil(count·width / 8)`` bytes (little-endian bit order); :func:`unpack_bits`
inverts it. Both are plain tensor operations, so packed payloads live in a
module's state dict and in safetensors files like any other tensor.
"""

from __future__ import annotations

import math

import torch

_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def bits_for(entries: int) -> int:
    """Bits per index for ``entries`` distinct values (at least 1)."""
    return max(1, math.ceil(math.log2(max(entries, 2))))


def packed_size(count: int, width: int) -> int:
    """Bytes :func:`pack_bits` produces for ``count`` values of ``width`` bits."""
    return (count * width + 7) // 8


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """``values`` (non-negative integers < 2**width) as a uint8 tensor of packed bits."""
    if not 1 <= width <= 62:
        raise ValueError(f"width must be between 1 and 62 bits, got {width}")
    flat = values.reshape(-1).to(torch.int64).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << width):
        raise ValueError(f"values must lie in [0, {1 << width}) to fit {width} bits")
    shifts = torch.arange(width, dtype=torch.int64)
    bits = ((flat[:, None] >> shifts) & 1).to(torch.uint8).reshape(-1)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.reshape(-1, 8) * _WEIGHTS).sum(1, dtype=torch.int64).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The ``count`` integers (int64) that :func:`pack_bits` stored in ``packed``."""
    if not torch.jit.is_tracing() and packed.numel() != packed_size(count, width):  # a trace fixes the sizes
        raise ValueError(f"{packed.numel()} bytes cannot hold {count} values of {width} bits")
    device = packed.device
    bits = ((packed.reshape(-1, 1).to(torch.int64) >> torch.arange(8, device=device)) & 1).reshape(-1)
    bits = bits[: count * width].reshape(count, width)
    return (bits << torch.arange(width, device=device)).sum(1)

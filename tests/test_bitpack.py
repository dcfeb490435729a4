"""Bit-packing round trips at every width, with the sizes the storage model counts."""

from __future__ import annotations

import pytest
import torch

from lcpress.nn.bitpack import bits_for, pack_bits, packed_size, unpack_bits


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 11, 18])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_round_trip(width, count):
    values = torch.randint(0, 1 << width, (count,), generator=torch.Generator().manual_seed(width * count))
    packed = pack_bits(values, width)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count, width) == (count * width + 7) // 8
    assert torch.equal(unpack_bits(packed, width, count), values)


def test_bits_for():
    assert [bits_for(k) for k in (1, 2, 3, 4, 5, 16, 17, 256)] == [1, 1, 2, 2, 3, 4, 5, 8]


def test_out_of_range_and_wrong_sizes_are_refused():
    with pytest.raises(ValueError, match="fit 2 bits"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 10)

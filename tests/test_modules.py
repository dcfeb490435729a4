"""lcpress's inference modules compute exactly what the torch layers they replace do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lcpress.nn.modules import PointwiseConv2d


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_1x1_conv(bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 1, bias=bias)
    fast = PointwiseConv2d.from_conv(conv)
    x = torch.randn(3, 6, 7, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-6)
    assert fast.state_dict().keys() == conv.state_dict().keys()
    assert [p.shape for p in fast.parameters()] == [p.shape for p in conv.parameters()]


def test_pointwise_conv_backward_matches():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 5, 1)
    fast = PointwiseConv2d.from_conv(conv)
    x = torch.randn(2, 4, 3, 3)
    conv(x).square().sum().backward()
    fast(x).square().sum().backward()
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-6)


def test_only_plain_1x1_convs_are_accepted():
    with pytest.raises(ValueError, match="only plain 1×1"):
        PointwiseConv2d.from_conv(nn.Conv2d(4, 4, 1, stride=2))
    with pytest.raises(ValueError, match="only plain 1×1"):
        PointwiseConv2d.from_conv(nn.Conv2d(4, 4, 3))

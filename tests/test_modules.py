"""lcpress's inference modules compute exactly what the torch layers they replace do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lcpress.nn.modules import PointwiseConv2d


GEMM_BATCH = PointwiseConv2d.CONV_UP_TO + 1  # the smallest batch that takes the batched matrix product


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [GEMM_BATCH, 1])  # the GEMM, and torch's own 1×1 conv for small batches
def test_pointwise_conv_equals_1x1_conv(bias, channels_last, batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 1, bias=bias)
    fast = PointwiseConv2d.from_conv(conv)
    x = torch.randn(batch, 6, 7, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-6)
    assert fast.state_dict().keys() == conv.state_dict().keys()
    assert [p.shape for p in fast.parameters()] == [p.shape for p in conv.parameters()]


def test_pointwise_conv_back_to_a_conv_is_exact():
    torch.manual_seed(0)
    fast = PointwiseConv2d.from_conv(nn.Conv2d(6, 10, 1))
    conv = fast.to_conv()
    x = torch.randn(GEMM_BATCH, 6, 4, 4)
    assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1)
    assert conv.state_dict().keys() == fast.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(conv(x), fast(x), rtol=1e-5, atol=1e-6)


def test_pointwise_conv_backward_matches():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 5, 1)
    fast = PointwiseConv2d.from_conv(conv)
    x = torch.randn(GEMM_BATCH, 4, 3, 3, requires_grad=True)
    conv(x).square().sum().backward()
    expected, x.grad = x.grad, None
    fast(x).square().sum().backward()
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_small_batches_run_torchs_own_conv_and_larger_ones_the_gemm(monkeypatch):
    """Which kernel runs is the point of the module: batches up to CONV_UP_TO take F.conv2d, larger ones bmm."""
    fast = PointwiseConv2d(4, 6)
    calls = []
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: calls.append("gemm") or torch.bmm(a[1], a[2]) + a[0])
    with torch.no_grad():
        fast(torch.randn(PointwiseConv2d.CONV_UP_TO, 4, 3, 3))
        assert calls == []
        fast(torch.randn(GEMM_BATCH, 4, 3, 3))
    assert calls == ["gemm"]


def test_only_plain_1x1_convs_are_accepted():
    with pytest.raises(ValueError, match="only plain 1×1"):
        PointwiseConv2d.from_conv(nn.Conv2d(4, 4, 1, stride=2))
    with pytest.raises(ValueError, match="only plain 1×1"):
        PointwiseConv2d.from_conv(nn.Conv2d(4, 4, 3))

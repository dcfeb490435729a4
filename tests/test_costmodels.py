"""Params and FLOPs cost models: exact agreement with torch's counters."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lcpress.core.forms import Dense, LowRank
from lcpress.core.graph import spec_of, trace
from lcpress.core.registry import get_registry

FLOPS = get_registry().cost_model("flops")()
PARAMS = get_registry().cost_model("params")()


def _measured_flops(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


LAYERS = [
    (nn.Linear(40, 24), torch.randn(5, 40)),
    (nn.Linear(40, 24, bias=False), torch.randn(2, 7, 40)),
    (nn.Conv2d(6, 16, 3, padding=1), torch.randn(2, 6, 11, 9)),
    (nn.Conv2d(6, 16, (3, 5), stride=2, padding=(1, 2), dilation=(2, 1)), torch.randn(1, 6, 17, 13)),
    (nn.Conv2d(8, 8, 3, groups=4), torch.randn(1, 8, 10, 10)),
]


@pytest.mark.parametrize("layer,x", LAYERS)
def test_dense_flops_match_flop_counter(layer, x):
    spec = spec_of(layer, tuple(x.shape))
    assert FLOPS.cost(spec, Dense()) == _measured_flops(layer, x)
    assert PARAMS.cost(spec, Dense()) == sum(p.numel() for p in layer.parameters())
    assert spec.output_shape == tuple(layer(x).shape)


@pytest.mark.parametrize("layer,x", LAYERS[:4])
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_factorized_flops_and_params_match_realized_module(layer, x, rank):
    from lcpress.plugins.low_rank import factorized_conv, factorized_linear

    spec = spec_of(layer, tuple(x.shape))
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    a, b = torch.randn(w.shape[0], rank), torch.randn(rank, w.shape[1])
    realized = factorized_linear(layer, a, b) if isinstance(layer, nn.Linear) else factorized_conv(layer, a, b, "channel")
    form = LowRank(rank)
    assert FLOPS.cost(spec, form) == _measured_flops(realized, x)
    assert PARAMS.cost(spec, form) == sum(p.numel() for p in realized.parameters())


def test_shared_layer_is_priced_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    model = Twice()
    x = torch.randn(3, 10)
    graph = trace(model, x)
    assert graph.specs["fc"].calls == 2
    assert FLOPS.cost(graph.specs["fc"], Dense()) == _measured_flops(model, x)


def test_costs_are_cached_and_vectorized_equals_scalar():
    spec = spec_of(nn.Linear(64, 32), (1, 64))
    forms = [Dense(), LowRank(8), LowRank(16)]
    vec = FLOPS.costs(spec, forms)
    assert vec.tolist() == [FLOPS.cost(spec, f) for f in forms]
    assert (spec, LowRank(8)) in FLOPS._cache


def test_graph_records_order_shapes_and_fx_dataflow():
    from lcpress.runs.demo import digits_cnn

    graph = trace(digits_cnn(), torch.randn(1, 1, 8, 8))
    assert graph.order == ["0", "2", "5", "8", "10"]
    assert graph.specs["8"].input_shape == (1, 2048)
    assert graph.traced_with_fx
    assert graph.graph.has_edge("0", "1")


def test_a_configured_cost_model_this_machine_lacks_is_named_once_when_no_task_uses_it(caplog, monkeypatch):
    import lcpress

    gpu = get_registry().cost_model("gpu_latency")
    monkeypatch.setattr(gpu, "unavailable_reason", lambda self: "no CUDA device here")
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 2, "rank_multiple": 1}}],
              "cost_models": {"gpu_latency": {"batch_size": 8}}, "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress"):
        result = lcpress.compress(nn.Sequential(nn.Linear(8, 8)), config, example_input=torch.randn(1, 8),
                                  progress=False)
    assert caplog.text.count("cost_models.gpu_latency: not available here (no CUDA device here)") == 1
    assert "gpu_latency_after" not in result.layers


def test_storage_priced_at_another_width_than_the_model_holds_is_a_warning(caplog):
    import lcpress

    config = {"tasks": [{"layers": ["0"], "options": {"rank_multiple": 1},
                         "target": {"cost": "storage", "ratio": 0.9}}], "cost_models": {"storage": {"dtype_bits": 16}},
              "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(nn.Sequential(nn.Linear(8, 8)), config, example_input=torch.randn(1, 8), progress=False)
        assert "dtype_bits: 16 prices each stored number at 16 bits, but the model holds 32-bit" in caplog.text
        assert "(model.half())" in caplog.text
        caplog.clear()
        lcpress.compress(nn.Sequential(nn.Linear(8, 8)).half(), config, example_input=torch.randn(1, 8).half(),
                         progress=False)
        assert "dtype_bits" not in caplog.text
        config["cost_models"]["storage"]["dtype_bits"] = 32  # a half model priced at 32 bits: convert it back
        lcpress.compress(nn.Sequential(nn.Linear(8, 8)).half(), config, example_input=torch.randn(1, 8).half(),
                         progress=False)
    assert "but the model holds 16-bit numbers" in caplog.text and "(model.float())" in caplog.text

"""The tucker2 scheme: the lcpress conformance kit, its realization and its form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lcpress
from lcpress import CStepContext, spec_of
from lcpress.testing import LayerCase, run_c_step
pytest.importorskip("lcpress_tucker", reason="install the package: pip install -e examples/lcpress-tucker")

from lcpress_tucker import Tucker2, Tucker2Scheme, plugin  # noqa: E402


def test_passes_the_conformance_kit_with_rank_selection(lcpress_conformance):
    report = lcpress_conformance.scheme(Tucker2Scheme, {"rank_multiple": 4})
    assert "exact_errors" in report.passed and "budget_monotone" in report.passed and "realize" in report.passed


def test_passes_the_conformance_kit_with_fixed_ranks(lcpress_conformance):
    report = lcpress_conformance.scheme(
        Tucker2Scheme, {"in_rank": 4, "out_rank": 4},
        budgets=[{"in_rank": 2, "out_rank": 2}, {"in_rank": 4, "out_rank": 6}, {"in_rank": 8, "out_rank": 12}],
    )
    assert "budget_monotone" in report.passed and "candidates" in report.skipped


CONVS = [
    LayerCase("same_padding", lambda: nn.Conv2d(8, 12, 3, padding="same"), (2, 8, 7, 7)),
    LayerCase("circular", lambda: nn.Conv2d(8, 12, 3, padding=1, padding_mode="circular", bias=False), (1, 8, 6, 5)),
    LayerCase("strided_5x3", lambda: nn.Conv2d(6, 10, (5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2)), (1, 6, 11, 9)),
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: c.name)
def test_realized_three_convs_equal_the_layer_holding_delta(case):
    module = case.module(seed=3)
    spec = case.spec()
    scheme = Tucker2Scheme(Tucker2Scheme.Options(in_rank=3, out_rank=5))
    state = run_c_step(scheme, module.weight.detach(), spec).state
    reference = copy.deepcopy(module)
    with torch.no_grad():
        reference.weight.copy_(scheme.decompress(state))
    realized = scheme.realize(state, module)
    assert [m.weight.shape[:2] for m in realized] == [(3, 8 if case.name != "strided_5x3" else 6), (5, 3),
                                                      (spec.out_channels, 5)]
    x = case.input()
    with torch.no_grad():
        torch.testing.assert_close(realized(x), reference(x), rtol=0, atol=1e-5)


def test_form_prices_exactly_what_the_realized_module_runs():
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    x = torch.randn(2, 16, 9, 9)
    spec = spec_of(conv, tuple(x.shape))
    scheme = Tucker2Scheme(Tucker2Scheme.Options(in_rank=4, out_rank=8))
    realized = scheme.realize(run_c_step(scheme, conv.weight.detach(), spec).state, conv)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        realized(x)
    form = Tucker2(4, 8)
    assert sum(p.flops for p in form.primitives(spec)) == counter.get_total_flops()
    assert form.param_count(spec) == sum(p.numel() for p in realized.parameters())


def test_candidates_skip_rank_pairs_that_carry_nothing():
    scheme = Tucker2Scheme(Tucker2Scheme.Options(rank_multiple=4))
    pointwise = torch.randn(16, 12, 1, 1)
    assert scheme.rank_pairs(pointwise) == [(4, 4), (8, 8)]  # a 1×1 core: r_out above r_in adds nothing
    candidates = scheme.candidates(pointwise, CStepContext(mu=1.0))
    assert [f.describe() for f in candidates.forms] == ["dense", "tucker2 4→4", "tucker2 8→8"]


def test_options_are_validated_with_the_key_path():
    with pytest.raises(lcpress.ConfigError, match=r"tasks\[0\]\.options\.in_rank: set both in_rank and out_rank"):
        Tucker2Scheme.Options.from_dict({"in_rank": 4}, "tasks[0].options")
    with pytest.raises(lcpress.ConfigError, match=r"iterations: must be non-negative"):
        Tucker2Scheme.Options.from_dict({"iterations": -1}, "tasks[0].options")


def test_refuses_linear_and_grouped_layers_before_training(lcpress_plugins):
    lcpress_plugins(plugin)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    config = {"tasks": [{"layers": ["2"], "scheme": "tucker2"}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match=r"layer '2': tucker2 compresses Conv2d layers, not Linear layers"):
        lcpress.compress(model, config, example_input=torch.randn(1, 4, 6, 6))
    config["tasks"][0]["layers"] = ["0"]
    with pytest.raises(lcpress.ConfigError, match="groups=1 only"):
        lcpress.compress(model, config, example_input=torch.randn(1, 4, 6, 6))


def test_compress_save_and_load_without_the_plugin(lcpress_plugins, tmp_path):
    lcpress_plugins(plugin)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    x = torch.randn(2, 8, 6, 6)
    config = {"tasks": [{"layers": ["0", "2"], "scheme": "tucker2", "options": {"rank_multiple": 4},
                         "target": {"cost": "params", "ratio": 0.5}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x)
    assert result.max_abs_error < 1e-4
    assert result.layers.set_index("layer").loc["2", "form"].startswith("tucker2")
    assert isinstance(model[2], nn.Sequential) and len(model[2]) == 3
    assert result.totals["params_after"] <= 0.5 * result.totals["params_before"]
    assert result.totals["params_after"] == sum(p.numel() for p in model.parameters())
    path = result.save(tmp_path / "model.safetensors")
    loaded = lcpress.load(path)  # standard layers only: no plugin code needed to load
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

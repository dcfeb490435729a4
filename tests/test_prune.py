"""Pruning: exact C steps for every mode, structured rows realized as smaller layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lcpress
from lcpress import CStepContext
from lcpress.nn.modules import ScatterChannels
from lcpress.nn.codecs import DecodedLinear, SparseWeight
from lcpress.plugins.prune import PrunedRows, PruneOptions, PruneScheme, Sparse, project_l1_ball
from lcpress.core.registry import get_registry

FLOPS = get_registry().cost_model("flops")()
STORAGE = get_registry().cost_model("storage")()


def _scheme(**options) -> PruneScheme:
    return PruneScheme(PruneOptions.from_dict(options))


def _compress(model, x, layers, **options):
    config = {"tasks": [{"layers": layers, "scheme": "prune", "options": options}], "schedule": {"steps": 0}}
    return lcpress.compress(model, config, example_input=x, progress=False)


def test_l0_constraint_keeps_the_largest_magnitudes():
    w = torch.randn(20, 30)
    for options, kept in (({"keep": 37}, 37), ({"keep_fraction": 0.1}, 60)):
        theta = _scheme(**options).compress(w, CStepContext(mu=1.0)).tensors["weight"]
        assert int(torch.count_nonzero(theta)) == kept
        survivors = theta != 0
        assert torch.equal(theta[survivors], w[survivors])
        assert w[~survivors].abs().max() <= w[survivors].abs().min()


def test_l1_constraint_is_the_projection_onto_the_ball():
    w = torch.randn(200, generator=torch.Generator().manual_seed(0))
    radius = 0.3 * float(w.abs().sum())
    theta = project_l1_ball(w, radius)
    assert float(theta.abs().sum()) == pytest.approx(radius, rel=1e-5)
    distance = float(((w - theta) ** 2).sum())
    g = torch.Generator().manual_seed(1)
    for _ in range(200):  # no feasible point is closer
        other = theta + 0.05 * torch.randn(200, generator=g)
        other = other * min(1.0, radius / float(other.abs().sum()))
        assert float(((w - other) ** 2).sum()) >= distance - 1e-5
    inside = torch.tensor([0.1, -0.2])
    assert torch.equal(project_l1_ball(inside, 1.0), inside)
    tiny = project_l1_ball(w, 1e-20)  # a radius below rounding of the weights: the largest one, shrunk to it
    assert int((tiny != 0).sum()) <= 1 and float(tiny.abs().sum()) <= 1e-15


def test_penalty_modes_threshold_at_the_closed_form_levels():
    w = torch.linspace(-1, 1, 101)
    mu, alpha = 2.0, 0.085  # threshold √(2α/μ) ≈ 0.29, between grid points
    l0 = _scheme(mode="l0_penalty", alpha=alpha).compress(w, CStepContext(mu=mu)).tensors["weight"]
    assert torch.equal(l0 != 0, w.abs() > (2 * alpha / mu) ** 0.5)
    l1 = _scheme(mode="l1_penalty", alpha=alpha).compress(w, CStepContext(mu=mu)).tensors["weight"]
    torch.testing.assert_close(l1, torch.sign(w) * (w.abs() - alpha / mu).clamp_min(0))


@pytest.mark.parametrize("mode", ["l0_penalty", "l1_penalty"])
def test_penalty_modes_at_zero_mu_keep_nothing(mode):  # schedule.dc_mu: 0, the LC toolkit's direct compression
    theta = _scheme(mode=mode, alpha=0.1).compress(torch.linspace(-1, 1, 11), CStepContext(mu=0.0)).tensors["weight"]
    assert not theta.count_nonzero()


def test_selection_errors_are_exact():
    w = torch.randn(24, 16)
    for structured in (False, True):
        scheme = _scheme(structured=structured, multiple=4)
        cands = scheme.candidates(w, CStepContext(mu=1.0))
        for i, form in enumerate(cands.forms):
            ctx = CStepContext(mu=1.0, candidates=cands, choice=i)
            delta = scheme.decompress(scheme.compress(w, ctx))
            assert float(((w - delta) ** 2).sum()) == pytest.approx(float(cands.errors[i]), rel=1e-6, abs=1e-9)


def test_unstructured_realization_equals_delta_and_stores_values_plus_positions(tmp_path):
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 5))
    x = torch.randn(4, 50)
    result = _compress(model, x, ["0"], keep_fraction=0.05)
    assert isinstance(model[0], DecodedLinear) and result.max_abs_error <= 1e-6
    codec = model[0].codecs[0]
    assert isinstance(codec, SparseWeight) and codec.nonzeros == 100 and not codec.uses_mask
    form = result.tasks[0].scheme.form(result.states[0])
    counted = STORAGE.cost(result.graph.specs["0"], form)
    assert counted <= model[0].storage_bits() < counted + 8
    loaded = lcpress.load(lcpress.save(model, tmp_path / "p.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_dense_masks_use_a_bitmap():
    codec = SparseWeight.of(torch.where(torch.rand(64, 64) < 0.5, 1.0, 0.0))
    assert codec.uses_mask and codec.positions.numel() == 64 * 64 // 8
    assert Sparse(10).storage_bits(lcpress.LayerSpec("linear", 64, 64, (1, 64), bias=False)) == 10 * 32 + 10 * 12


@pytest.mark.parametrize("layer, x", [
    (nn.Linear(30, 24), torch.randn(5, 30)),
    (nn.Conv2d(4, 16, 3, stride=2, padding=1), torch.randn(2, 4, 9, 9)),
], ids=["linear", "conv"])
def test_structured_rows_realize_as_a_smaller_layer(layer, x):
    model = nn.Sequential(copy.deepcopy(layer), nn.ReLU(), nn.Flatten())
    result = _compress(model, x, ["0"], structured=True, keep=8)
    small, scatter = model[0]
    assert isinstance(scatter, ScatterChannels)
    assert (small.out_features if isinstance(small, nn.Linear) else small.out_channels) == 8
    assert result.max_abs_error <= 1e-5  # pruned outputs still carry their bias
    spec = result.graph.specs["0"]
    assert FLOPS.cost(spec, PrunedRows(8)) == pytest.approx(spec.flops * 8 / 24 if spec.kind == "linear" else spec.flops / 2)


def test_structured_pruning_meets_a_flops_budget():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(1, 64)
    config = {"tasks": [{"layers": ["0", "2"], "scheme": "prune", "options": {"structured": True},
                         "target": {"cost": "flops", "ratio": 0.5}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    rows = result.layers.set_index("layer")
    after = rows.loc[["0", "2"], "flops_after"].sum()
    before = rows.loc[["0", "2"], "flops_before"].sum()
    assert after <= 0.5 * before
    assert all(r % 8 == 0 for r in rows.loc[["0", "2"], "form_rows"] if r == r)


def test_global_sparsity_over_shared_layers_reports_each_layer():
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))
    with torch.no_grad():
        model[2].weight.mul_(10)  # the second layer's weights are larger: it keeps more of them
    x = torch.randn(2, 30)
    result = _compress_shared(model, x)
    nonzeros = list(result.layers["form_nonzeros"])
    assert sum(nonzeros) == round(0.1 * (600 + 200)) and nonzeros[1] > nonzeros[0]


def _compress_shared(model, x):
    config = {"tasks": [{"layers": ["*"], "scheme": "prune", "options": {"keep_fraction": 0.1}, "shared": True}],
              "schedule": {"steps": 0}}
    return lcpress.compress(model, config, example_input=x, progress=False)


@pytest.mark.parametrize("options, message", [
    ({"keep": 3, "keep_fraction": 0.5}, "not both"),
    ({"mode": "l1_constraint"}, "radius"),
    ({"mode": "l0_penalty", "alpha": -1}, "alpha"),
    ({"mode": "l1_penalty", "alpha": 1.0, "structured": True}, "structured"),
    ({"keep_fraction": 1.5}, "keep_fraction"),
])
def test_bad_options_name_the_key(options, message):
    with pytest.raises(lcpress.ConfigError, match=message):
        lcpress.load_config({"tasks": [{"layers": ["*"], "scheme": "prune", "options": options}]})


def test_structured_pruning_of_a_shared_vector_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    config = {"tasks": [{"layers": ["*"], "scheme": "prune", "options": {"structured": True, "keep": 2},
                         "shared": True}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.LcpressError, match="shared vector"):
        lcpress.compress(model, config, example_input=torch.randn(1, 8), progress=False)


def test_a_budget_with_a_fixed_form_is_refused_before_training():
    model = nn.Sequential(nn.Linear(8, 8))
    config = {"tasks": [{"layers": ["0"], "scheme": "prune", "options": {"keep": 4},
                         "target": {"cost": "params", "ratio": 0.5}}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match=r"tasks\[0\]\.target: .*does not choose a form.*leave keep and "
                                                  r"keep_fraction out"):
        lcpress.compress(model, config, example_input=torch.randn(1, 8), progress=False)


def test_structured_pruning_that_would_keep_every_row_leaves_the_layer_alone(caplog):
    """A Linear(32→1) asked to keep 8 rows has nothing to prune: named, it is refused; by a glob, left dense."""
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    task = {"scheme": "prune", "options": {"structured": True, "keep": 8}}
    with pytest.raises(lcpress.ConfigError, match=r"layer '2': keeping 8 rows of its 1 prunes none"):
        lcpress.compress(model, {"tasks": [{"layers": ["2"], **task}], "schedule": {"steps": 0}},
                         example_input=torch.randn(1, 16), progress=False)
    with caplog.at_level("WARNING", logger="lcpress"):
        result = lcpress.compress(model, {"tasks": [{"layers": ["*"], **task}], "schedule": {"steps": 0}},
                                  example_input=torch.randn(1, 16), progress=False)
    assert [r.name for r in result.records] == ["0"] and isinstance(model[2], nn.Linear)
    assert "prunes none" in caplog.text


def test_a_row_pruned_layer_is_priced_at_what_its_file_holds(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    config = {"tasks": [{"layers": ["0"], "scheme": "prune", "options": {"structured": True, "keep": 8},
                         "cost": "storage"}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=torch.randn(1, 64), progress=False)
    stored = load_file(lcpress.save(model, tmp_path / "m.safetensors"))
    bits = sum(t.numel() * t.element_size() * 8 for name, t in stored.items() if name.startswith("0."))
    assert result.records[0].realized and bits == result.layers.iloc[0]["storage_after"]


@pytest.mark.parametrize("shared, keep, warns", [(False, 200, True), (True, 600, False), (True, 800, True)])
def test_an_unstructured_keep_of_every_weight_is_said_once(caplog, shared, keep, warns):
    """keep ≥ the weights pruned from prunes nothing: said once per run, counted over a shared task's layers."""
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))  # 600 + 200 weights
    layers = ["*"] if shared else ["2"]
    config = {"tasks": [{"layers": layers, "scheme": "prune", "options": {"keep": keep}, "shared": shared}],
              "schedule": {"mu0": 1e-3, "factor": 2.0, "steps": 3}}
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(model, config, example_input=torch.randn(2, 30),
                         train_fn=lambda m, penalty, epoch: None, progress=False)
    said = [r for r in caplog.records if "nothing is pruned" in r.getMessage()]
    assert len(said) == (1 if warns else 0)

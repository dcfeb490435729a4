"""The rank-selection C step against brute force, and its exactness."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcpress
from lcpress.core import budget
from lcpress.core.forms import Dense, LayerSpec, LowRank
from lcpress.linalg import spectrum
from lcpress.core.registry import get_registry
from lcpress.core.scheme import CStepContext

SCHEME = get_registry().scheme("low_rank")
PARAMS = get_registry().cost_model("params")()
FLOPS = get_registry().cost_model("flops")()


def _linear_spec(out: int, inp: int) -> LayerSpec:
    return LayerSpec("linear", inp, out, (1, inp))


def _select(w, spec, alpha, mu, cost_model, **options):
    scheme = SCHEME(SCHEME.Options(**options))
    ctx = CStepContext(mu=mu, cost_model=cost_model, spec=spec)
    ctx.candidates = scheme.candidates(w, ctx)
    costs = cost_model.costs(spec, ctx.candidates.forms)
    ctx.choice = budget.choose_with_alpha([costs], [ctx.candidates.errors], alpha, mu).indices[0]
    return scheme, scheme.compress(w, ctx)


def _brute_force(w, spec, alpha, mu, cost_model, multiple):
    s = torch.linalg.svdvals(w.double())
    best = (alpha * cost_model.cost(spec, Dense()), Dense())
    for r in range(multiple, len(s), multiple):
        objective = alpha * cost_model.cost(spec, LowRank(r)) + mu / 2 * float(torch.sum(s[r:] ** 2))
        if objective < best[0]:
            best = (objective, LowRank(r))
    return best[1]


@pytest.mark.parametrize("alpha", [1e-7, 1e-5, 1e-4, 1e-3, 1e-2])
@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("cost", ["params", "flops"])
def test_rank_selection_matches_brute_force(alpha, multiple, cost):
    torch.manual_seed(1)
    # a matrix with a decaying spectrum, so different α pick different ranks
    u, _ = torch.linalg.qr(torch.randn(48, 48))
    v, _ = torch.linalg.qr(torch.randn(64, 48))
    w = (u * torch.logspace(0, -3, 48)) @ v.T
    spec = _linear_spec(48, 64)
    model = PARAMS if cost == "params" else FLOPS
    scheme, state = _select(w, spec, alpha, mu=1.0, cost_model=model, rank_multiple=multiple)
    assert scheme.form(state) == _brute_force(w, spec, alpha, 1.0, model, multiple)


def test_error_equals_tail_of_singular_values():
    torch.manual_seed(2)
    w = torch.randn(40, 70)
    spec = spectrum(w)
    s = torch.linalg.svdvals(w.double())
    for r in (1, 5, 17, 39):
        a, b = spec.factors(r)
        err = float(torch.sum((w.double() - a.double() @ b.double()) ** 2))
        assert err == pytest.approx(float(torch.sum(s[r:] ** 2)), rel=1e-5)
        assert float(spec.tail_errors()[r]) == pytest.approx(err, rel=1e-5)


def test_tall_matrix_uses_right_vectors_and_stays_exact():
    torch.manual_seed(3)
    w = torch.randn(90, 30)
    spec = spectrum(w)
    assert not spec.left
    a, b = spec.factors(10)
    s = torch.linalg.svdvals(w.double())
    assert float(torch.sum((w.double() - (a @ b).double()) ** 2)) == pytest.approx(float(torch.sum(s[10:] ** 2)), rel=1e-5)


@pytest.mark.parametrize("shape", [(40, 70), (90, 30)])
def test_each_factor_carries_the_square_root_of_the_singular_values(shape):
    """A = U√S, B = √S Vᵀ: both sides of the realized layer carry the same share of every direction."""
    torch.manual_seed(5)
    w = torch.randn(*shape) * 100
    a, b = spectrum(w).factors(8)
    s = torch.linalg.svdvals(w.double())[:8]
    assert torch.allclose(a.double().norm(dim=0), s.sqrt(), rtol=1e-4)
    assert torch.allclose(b.double().norm(dim=1), s.sqrt(), rtol=1e-4)


def test_a_float16_low_rank_layer_does_not_overflow_between_its_thin_layers():
    """A = U would put all of s₁ ≈ 64,000 on the first thin layer's output, past float16's 65,504."""
    layer = nn.Linear(256, 256).half()
    with torch.no_grad():
        layer.weight.fill_(250.0)
        layer.bias.zero_()
    model = nn.Sequential(layer)
    x = torch.ones(4, 256, dtype=torch.float16) * 0.075
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    with torch.no_grad():
        out = result.model(x)
    assert torch.isfinite(out).all() and float(out.max()) == pytest.approx(4800.0, rel=1e-2)


def test_alpha_zero_keeps_dense_and_large_alpha_takes_smallest_rank():
    torch.manual_seed(4)
    w = torch.randn(64, 64)
    spec = _linear_spec(64, 64)
    scheme, state = _select(w, spec, alpha=0.0, mu=1.0, cost_model=PARAMS)
    assert scheme.form(state) == Dense()
    assert torch.equal(scheme.decompress(state), w)
    scheme, state = _select(w, spec, alpha=1e6, mu=1.0, cost_model=PARAMS)
    assert scheme.form(state) == LowRank(8)


def test_fixed_rank_and_conv_matrix_view():
    torch.manual_seed(5)
    w = torch.randn(16, 8, 3, 3)
    scheme = SCHEME(SCHEME.Options(rank=4))
    state = scheme.compress(w, CStepContext(mu=1.0))
    assert scheme.form(state) == LowRank(4, "channel")
    delta = scheme.decompress(state)
    assert delta.shape == w.shape
    s = torch.linalg.svdvals(w.reshape(16, 72).double())
    assert float(torch.sum((w - delta).double() ** 2)) == pytest.approx(float(torch.sum(s[4:] ** 2)), rel=1e-5)


def test_nan_weights_are_refused_with_a_clear_error():
    w = torch.randn(8, 8)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SCHEME().candidates(w, CStepContext(mu=1.0))


def test_batched_spectra_equal_single():
    from lcpress.linalg import spectra

    torch.manual_seed(6)
    mats = [torch.randn(12, 20) for _ in range(3)] + [torch.randn(20, 12)]
    for batched, m in zip(spectra(mats), mats):
        single = spectrum(m)
        assert torch.allclose(batched.squared, single.squared, rtol=1e-10, atol=1e-10)


def test_options_are_validated():
    from lcpress import ConfigError

    with pytest.raises(ConfigError, match="rank_multiple"):
        SCHEME.Options.from_dict({"rank_multiple": 0}, "tasks[0].options")
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.options\.shape"):
        SCHEME.Options.from_dict({"shape": "diagonal"}, "tasks[0].options")
    with pytest.raises(ConfigError, match="unknown key"):
        SCHEME.Options.from_dict({"rnak": 3}, "tasks[0].options")


def test_grouped_conv_is_refused_at_planning():
    scheme = SCHEME()
    spec = LayerSpec("conv2d", 8, 8, (1, 8, 6, 6), kernel_size=(3, 3), groups=2)
    assert "groups=1" in scheme.check_layer(spec, nn.Conv2d(8, 8, 3, groups=2))


def test_batched_candidates_equal_one_at_a_time():
    torch.manual_seed(7)
    scheme = SCHEME(SCHEME.Options(rank_multiple=4))
    ws = [torch.randn(16, 24), torch.randn(16, 24), torch.randn(8, 4, 3, 3)]
    many = scheme.candidates_many([(w, CStepContext(mu=1.0)) for w in ws])
    for w, batched in zip(ws, many):
        single = scheme.candidates(w, CStepContext(mu=1.0))
        assert batched.forms == single.forms
        assert torch.allclose(batched.errors, single.errors, rtol=1e-9, atol=1e-9)


def test_normalized_error_makes_alpha_scale_free():
    """With normalize, scaling a layer's weight does not change its chosen rank."""
    import lcpress

    torch.manual_seed(8)
    u, _ = torch.linalg.qr(torch.randn(32, 32))
    base = (u * torch.logspace(0, -2, 32)) @ torch.linalg.qr(torch.randn(32, 32))[0]

    def chosen_rank(scale, normalize):
        model = nn.Sequential(nn.Linear(32, 32))
        with torch.no_grad():
            model[0].weight.copy_(base * scale)
        cfg = {"tasks": [{"layers": ["0"], "options": {"rank_multiple": 4}, "alpha": 1e-5 if normalize else 1e-3,
                          "normalize": normalize, "cost": "params"}],
               "schedule": {"steps": 0, "mu0": 1.0}}
        result = lcpress.compress(model, cfg, example_input=torch.randn(1, 32))
        return result.layers["form"].iloc[0]

    assert chosen_rank(1.0, True) == chosen_rank(100.0, True)
    assert chosen_rank(1.0, False) != chosen_rank(100.0, False)


@pytest.mark.parametrize("shape", ["channel", "spatial", "input"])
def test_matricizations_invert_and_the_input_shape_factors_over_input_channels(shape):
    from lcpress.linalg import from_matrix, to_matrix

    w = torch.randn(6, 4, 3, 5)
    m = to_matrix(w, shape)
    assert torch.equal(from_matrix(m, tuple(w.shape), shape), w)
    if shape == "input":  # one column per input channel: a rank-r product is a 1×1 conv in→r, then a k×k conv
        assert m.shape == (6 * 3 * 5, 4) and torch.equal(m[:, 2], w[:, 2].reshape(-1))


def _mobile_block():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                         nn.Conv2d(16, 32, 1), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


def test_a_glob_leaves_depthwise_convs_alone_and_naming_one_is_refused(caplog):
    """'*' over a MobileNet-style model compresses what low_rank can and says which layers it left."""
    x = torch.randn(2, 3, 8, 8)
    config = {"tasks": [{"layers": ["*"], "options": {"rank": 4, "rank_multiple": 1}}], "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress"):
        result = lcpress.compress(_mobile_block(), config, example_input=x)
    assert [r.name for r in result.records] == ["0", "3", "5"]
    left = [r.message for r in caplog.records if "left alone" in r.message]
    assert len(left) == 1 and "'2' (low_rank factorizes convolutions with groups=1 only)" in left[0]
    config["tasks"][0]["layers"] = ["0", "2"]
    with pytest.raises(lcpress.ConfigError, match=r"tasks\[0\]: layer '2': low_rank factorizes convolutions with groups=1"):
        lcpress.compress(_mobile_block(), config, example_input=x)
    config["tasks"][0]["layers"] = ["2*"]
    with pytest.raises(lcpress.ConfigError, match=r"low_rank can compress none of the layers matched: '2'"):
        lcpress.compress(_mobile_block(), config, example_input=x)


@pytest.mark.parametrize("allocation", ["sum", "minmax"])
def test_a_budget_is_not_spent_on_rounding_past_an_exact_rank(allocation):
    """An exactly rank-4 layer under a budget that allows rank 16 gets rank 4: ranks past it remove only
    rounding (~1e-13·‖W‖²), and a target is a bound, not a quota."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))
    config = {"tasks": [{"layers": ["0"], "options": {"rank_multiple": 1, "allocation": allocation},
                         "target": {"cost": "params", "ratio": 0.5}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=torch.randn(2, 64), progress=False)
    assert result.states[0].meta["rank"] == 4


def test_spectra_stacked_a_few_at_a_time_are_the_spectra_of_one_stack(monkeypatch):
    import lcpress.linalg.spectral as spectral

    torch.manual_seed(6)
    matrices = [torch.randn(12, 20) for _ in range(5)] + [torch.randn(30, 8) for _ in range(3)]
    whole = spectral.spectra(matrices)
    monkeypatch.setattr(spectral, "BATCH_BYTES", 1)  # one matrix per eigh
    apart = spectral.spectra(matrices)
    for a, b in zip(whole, apart):
        assert a.left == b.left and torch.allclose(a.squared, b.squared, rtol=1e-12, atol=1e-10)
        for r in (1, 4):
            torch.testing.assert_close(torch.mm(*a.factors(r)), torch.mm(*b.factors(r)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_the_entrywise_check(dtype):
    """One sum decides for finite weights; a NaN, an inf or both infinities anywhere are found."""
    from lcpress.linalg import all_finite

    w = torch.randn(64, 48).to(dtype)
    assert all_finite(w)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = w.clone()
        broken[17, 5] = bad
        assert not all_finite(broken)
    both = w.clone()
    both[0, 0], both[1, 1] = float("inf"), float("-inf")  # sum is NaN, not inf
    assert not all_finite(both)
    assert all_finite(torch.empty(0, 3, dtype=dtype)) and all_finite(torch.arange(10))


def test_all_finite_falls_back_when_finite_entries_overflow_their_sum():
    """float16 entries of 60,000 are finite; their sum overflows, and that alone must not refuse the weight."""
    from lcpress.linalg import all_finite

    w = torch.full((1000,), 60000.0, dtype=torch.float16)
    assert not bool(torch.isfinite(w.sum()))
    assert all_finite(w)

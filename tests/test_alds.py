"""ALDS: grouped realization is exact; min–max allocation beats uniform-rank SVD."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lcpress
from lcpress.core import budget
from lcpress.core.forms import Dense, LowRank
from lcpress.core.graph import trace
from lcpress.plugins.alds import GroupedLowRank
from lcpress.core.registry import get_registry
from lcpress.core.scheme import CStepContext

ALDS = get_registry().scheme("alds")
FLOPS = get_registry().cost_model("flops")()
PARAMS = get_registry().cost_model("params")()


@pytest.mark.parametrize("layer,x", [
    (nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.randn(2, 8, 9, 9)),
    (nn.Conv2d(8, 12, (3, 1), dilation=2, padding=(2, 0), bias=False), torch.randn(1, 8, 7, 7)),
    (nn.Linear(16, 10), torch.randn(3, 5, 16)),
])
@pytest.mark.parametrize("groups,rank", [(1, 3), (2, 3), (4, 2)])
def test_grouped_realization_equals_dense_delta(layer, x, groups, rank):
    from lcpress.core.graph import spec_of

    scheme = ALDS(ALDS.Options(groups=[groups], rank_multiple=1))
    w = layer.weight.detach()
    ctx = CStepContext(mu=1.0)
    ctx.candidates = scheme.candidates(w, ctx)
    ctx.choice = ctx.candidates.forms.index(GroupedLowRank(groups, rank))
    state = scheme.compress(w, ctx)
    reference = copy.deepcopy(layer)
    with torch.no_grad():
        reference.weight.copy_(scheme.decompress(state))
        realized = scheme.realize(state, layer)
        torch.testing.assert_close(realized(x), reference(x), rtol=0, atol=1e-5)
    # the candidate's error is exact, and params/FLOPs of the form match the realized module
    assert float(((w - scheme.decompress(state)) ** 2).sum()) == pytest.approx(float(ctx.candidates.errors[ctx.choice]), rel=1e-4)
    spec = spec_of(layer, tuple(x.shape))
    assert PARAMS.cost(spec, GroupedLowRank(groups, rank)) == sum(p.numel() for p in realized.parameters())
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        realized(x)
    assert FLOPS.cost(spec, GroupedLowRank(groups, rank)) == counter.get_total_flops()


def _trained_digits():
    from lcpress.runs.demo import digits_cnn, digits_loaders, train_dense

    torch.manual_seed(0)
    model = digits_cnn()
    train_dense(model, digits_loaders(64, 0)[0], epochs=2, progress=False)
    return model


def _random_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 6 * 6, 64))


def _max_relative_error(model, names, forms_by_layer):
    """Largest relative error of each layer's best approximation in the given form."""
    worst = 0.0
    for name in names:
        w = model.get_submodule(name).weight.detach()
        form = forms_by_layer[name]
        if isinstance(form, Dense):
            continue
        s = torch.linalg.svdvals(w.reshape(w.shape[0], -1).double())
        err = float(torch.sum(s[form.rank:] ** 2))
        worst = max(worst, err / float(torch.sum(w.double() ** 2)))
    return worst


@pytest.mark.parametrize("make,x,names", [
    (_random_net, torch.randn(1, 16, 6, 6), ["0", "2", "5"]),
    (_trained_digits, torch.randn(1, 1, 8, 8), ["2", "5", "8"]),
])
@pytest.mark.parametrize("ratio", [0.35, 0.5])
def test_alds_max_error_is_never_worse_than_uniform_svd(make, x, names, ratio):
    model = make()
    graph = trace(model, x)
    budget_flops = ratio * sum(FLOPS.cost(graph.specs[n], Dense()) for n in names)
    # uniform-rank SVD: one rank fraction for every layer, the largest that fits the budget
    best_uniform = None
    for frac in [i / 64 for i in range(64, 0, -1)]:
        forms = {}
        for n in names:
            full = min(graph.specs[n].weight_shape[0], int(torch.tensor(graph.specs[n].weight_shape[1:]).prod()))
            forms[n] = LowRank(max(8, int(frac * full) // 8 * 8))
        if sum(FLOPS.cost(graph.specs[n], forms[n]) for n in names) <= budget_flops:
            best_uniform = forms
            break
    assert best_uniform is not None
    uniform_err = _max_relative_error(model, names, best_uniform)
    result = lcpress.compress(
        copy.deepcopy(model),
        {"tasks": [{"layers": names, "scheme": "alds", "target": {"cost": "flops", "ratio": ratio}}], "schedule": {"steps": 0}},
        example_input=x)
    assert result.history["target0_achieved"].iloc[0] <= budget_flops
    alds_err = 0.0
    for task, state in zip(result.tasks, result.states):
        w = task.weight().detach()
        delta = task.scheme.decompress(state)
        alds_err = max(alds_err, float(((w - delta) ** 2).sum() / (w ** 2).sum()))
    assert alds_err <= uniform_err + 1e-9


def test_minmax_choice_is_exact_against_brute_force():
    import itertools

    torch.manual_seed(3)
    costs = [torch.tensor([10.0, 6.0, 3.0, 1.0]), torch.tensor([8.0, 5.0, 2.0]), torch.tensor([4.0, 2.0, 1.0])]
    errors = [torch.tensor([0.0, 0.1, 0.3, 0.6]), torch.tensor([0.0, 0.2, 0.5]), torch.tensor([0.0, 0.05, 0.4])]
    for b in [5.0, 8.0, 11.0, 14.0, 22.0]:
        choice = budget.choose_minmax(costs, errors, b)
        best = min(max(float(e[i]) for e, i in zip(errors, idx))
                   for idx in itertools.product(*[range(len(c)) for c in costs])
                   if sum(float(c[i]) for c, i in zip(costs, idx)) <= b)
        assert max(float(e[i]) for e, i in zip(errors, choice.indices)) == best
        assert choice.total_cost <= b


def test_alds_one_shot_and_as_lc_start(digits):
    model = _trained_digits()
    train, test = digits
    cfg = {"tasks": [{"layers": ["2", "5", "8"], "scheme": "alds", "target": {"cost": "flops", "ratio": 0.3}}],
           "schedule": {"steps": 2, "mu0": 0.03, "factor": 1.5}, "train": {"epochs": 1}}
    result = lcpress.compress(model, cfg, loaders=(train, test))
    assert result.history["target0_achieved"].iloc[-1] <= result.history["target0_requested"].iloc[-1]
    assert result.max_abs_error < 1e-4
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules()) or \
        all(r.form.get("groups", 1) == 1 for r in result.records if r.realized)


def test_alds_needs_a_selection():
    scheme = ALDS()
    with pytest.raises(ValueError, match="give 'alpha' or 'target'"):
        scheme.compress(torch.randn(4, 4), CStepContext(mu=1.0))


def test_groups_that_divide_no_input_width_are_said_instead_of_blaming_the_target():
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 4))
    config = {"tasks": [{"layers": ["0"], "scheme": "alds", "options": {"groups": [4, 8]},
                         "target": {"cost": "flops", "ratio": 0.5}}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match=r"layer '0': none of the groups \[4, 8\] divides its 30 input"):
        lcpress.compress(model, config, example_input=torch.randn(1, 30), progress=False)

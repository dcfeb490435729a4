"""Global budgets, hardware-friendly ranks, and conv decomposition shapes."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import lcpress
from lcpress.core import budget
from lcpress.core.forms import Dense, LowRank
from lcpress.core.registry import get_registry, using_plugins


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64 * 4 * 4, 96), nn.ReLU(), nn.Linear(96, 10))


X = torch.randn(1, 3, 8, 8)
LAYERS = ["2", "4", "7"]


def _run(target, **task):
    model = _net()
    cfg = {"tasks": [{"layers": LAYERS, "target": target, **task}], "schedule": {"steps": 0}}
    return model, lcpress.compress(model, cfg, example_input=X)


@pytest.mark.parametrize("cost", ["flops", "params"])
@pytest.mark.parametrize("ratio", [0.25, 0.4, 0.6])
def test_bisection_meets_the_target_within_one_candidate_step(cost, ratio):
    model, result = _run({"cost": cost, "ratio": ratio})
    requested = result.history["target0_requested"].iloc[0]
    achieved = result.history["target0_achieved"].iloc[0]
    assert achieved <= requested
    cost_model = get_registry().cost_model(cost)()
    dense = sum(cost_model.cost(result.graph.specs[n], Dense()) for n in LAYERS)
    assert requested == pytest.approx(ratio * dense)
    # one candidate step: the slack is smaller than the largest single upgrade any layer could take
    steps = []
    for task, state in zip(result.tasks, result.states):
        form = task.scheme.form(state)
        if isinstance(form, LowRank):
            up = LowRank(form.rank + 8)
            steps.append(cost_model.cost(task.spec, up) - cost_model.cost(task.spec, form))
    assert requested - achieved <= max(steps) + 1e-9


def test_achieved_and_requested_are_reported_in_the_table():
    _, result = _run({"cost": "flops", "ratio": 0.3})
    totals = result.layers.set_index("layer").loc[LAYERS, "flops_after"].sum()
    assert totals == result.history["target0_achieved"].iloc[0]


def test_absolute_budget_value():
    _, result = _run({"cost": "params", "value": 20000})
    assert result.history["target0_achieved"].iloc[0] <= 20000


def test_ranks_are_multiples_and_the_realized_rank_is_the_chosen_one():
    model, result = _run({"cost": "flops", "ratio": 0.3}, options={"rank_multiple": 8})
    for record, state, task in zip(result.records, result.states, result.tasks):
        form = task.scheme.form(state)
        if isinstance(form, LowRank):
            assert form.rank % 8 == 0
            first = model.get_submodule(record.name)[0]
            assert (first.out_channels if isinstance(first, nn.Conv2d) else first.out_features) == form.rank
    model, result = _run({"cost": "flops", "ratio": 0.3}, options={"rank_multiple": 1})
    ranks = [task.scheme.form(s).rank for task, s in zip(result.tasks, result.states)
             if isinstance(task.scheme.form(s), LowRank)]
    assert any(r % 8 for r in ranks)  # with 1, ranks are free


class StairCost(lcpress.CostModel):
    """A third-party cost model: ranks that are multiples of 16 are cheap."""

    name = "stair_cost"

    def cost(self, spec, form):
        if isinstance(form, LowRank):
            return float(form.rank if form.rank % 16 == 0 else form.rank * 4)
        return 1000.0


class StairPlugin:
    __name__ = "stair_plugin"

    @lcpress.hookimpl
    def lcpress_register_cost_models(self, register):
        register(StairCost)


def test_any_registered_cost_model_can_set_the_budget():
    with using_plugins(StairPlugin()):
        _, result = _run({"cost": "stair_cost", "ratio": 0.05}, options={"rank_multiple": 8})
        assert "cost_stair_cost" in result.history.columns
    assert result.history["target0_achieved"].iloc[0] <= 0.05 * 3000
    for task, state in zip(result.tasks, result.states):
        form = task.scheme.form(state)
        assert isinstance(form, LowRank) and form.rank % 16 == 0  # the cheap stairs win
    with pytest.raises(lcpress.ConfigError, match="no cost model named 'stair_cost'"):
        _run({"cost": "stair_cost", "ratio": 0.05})


def _objective(task, state, w, alpha, mu):
    form = task.scheme.form(state)
    err = float(((w - task.scheme.decompress(state)) ** 2).sum())
    return alpha * task.cost_model.cost(task.spec, form) + mu / 2 * err


@pytest.mark.parametrize("alpha", [1e-6, 1e-5, 1e-4])
def test_auto_shape_is_never_worse_than_either_shape(alpha):
    objectives = {}
    for shape in ("channel", "spatial", "input", "auto"):
        model = _net()
        weights = {n: model.get_submodule(n).weight.detach().clone() for n in ["0", "2", "4"]}
        cfg = {"tasks": [{"layers": ["0", "2", "4"], "alpha": alpha, "options": {"shape": shape, "rank_multiple": 1}}],
               "schedule": {"steps": 0, "mu0": 1.0}}
        result = lcpress.compress(model, cfg, example_input=X)
        objectives[shape] = [_objective(t, s, weights[t.name], alpha, 1.0) for t, s in zip(result.tasks, result.states)]
    for i in range(3):
        best = min(objectives[shape][i] for shape in ("channel", "spatial", "input"))
        assert objectives["auto"][i] <= best * (1 + 1e-6) + 1e-12


def test_budget_below_the_cheapest_forms_uses_the_cheapest_and_says_so(caplog):
    _, result = _run({"cost": "params", "value": 10})
    assert "is out of reach: the cheapest forms" in caplog.text
    assert result.history["target0_achieved"].iloc[0] > 10


def test_choose_for_budget_against_brute_force():
    import itertools

    costs = [torch.tensor([10.0, 6.0, 3.0, 1.0]), torch.tensor([8.0, 5.0, 2.0])]
    errors = [torch.tensor([0.0, 1.0, 3.0, 9.0]), torch.tensor([0.0, 2.0, 7.0])]
    for b in [4.0, 8.0, 11.0, 18.0]:
        choice = budget.choose_for_budget(costs, errors, b)
        assert choice.total_cost <= b
        feasible = [idx for idx in itertools.product(range(4), range(3))
                    if sum(float(c[i]) for c, i in zip(costs, idx)) <= b]
        best = min(sum(float(e[i]) for e, i in zip(errors, idx)) for idx in feasible)
        got = sum(float(e[i]) for e, i in zip(errors, choice.indices))
        assert got >= best  # Lagrangian solutions lie on the convex hull: at most the exact optimum …
        assert got <= best + max(float(e.max()) for e in errors)  # … and within one step of it


def test_choose_for_budget_spends_what_the_convex_hull_leaves():
    """A candidate above the hull's chord is never a trade-off's pick; fill reaches it when the budget allows."""
    costs, errors = [torch.tensor([1.0, 5.0, 10.0])], [torch.tensor([10.0, 6.0, 0.0])]
    assert budget.pick(costs[0], errors[0], 10 / 9) in (0, 2)  # the chord's slope: 5 → 6 lies above it
    choice = budget.choose_for_budget(costs, errors, 7.0)
    assert choice.indices == [1] and choice.total_cost == 5.0


def test_choose_for_budget_fill_is_never_worse_than_the_hull_and_never_over_budget():
    import itertools

    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        layers = 2 + trial % 3
        costs = [torch.sort(torch.rand(5, generator=generator) * 10, descending=True).values for _ in range(layers)]
        errors = [torch.sort(torch.rand(5, generator=generator) * 10).values for _ in range(layers)]
        for e in errors:
            e[0] = 0.0  # the costliest candidate (dense) has no error
        b = float(sum(c.min() for c in costs)) + float(torch.rand((), generator=generator)) * 15
        choice = budget.choose_for_budget(costs, errors, b)
        total = lambda idx, xs: sum(float(x[i]) for x, i in zip(xs, idx))  # noqa: E731
        assert choice.total_cost == pytest.approx(total(choice.indices, costs)) and choice.total_cost <= b + 1e-9
        hull = [budget.pick(c, e, choice.trade_off) for c, e in zip(costs, errors)]
        assert total(choice.indices, errors) <= total(hull, errors)
        feasible = [idx for idx in itertools.product(range(5), repeat=layers) if total(idx, costs) <= b]
        assert total(choice.indices, errors) >= min(total(idx, errors) for idx in feasible) - 1e-9
        assert not any(total(choice.indices, costs) - float(c[i]) + float(c[j]) <= b  # no single move fits and helps
                       and float(e[j]) < float(e[i])
                       for c, e, i in zip(costs, errors, choice.indices) for j in range(5))


def test_minmax_spends_what_its_level_leaves_without_raising_the_level():
    costs = [torch.tensor([10.0, 5.0, 4.0, 1.0]), torch.tensor([10.0, 8.0, 6.0, 2.0])]
    relative = [torch.tensor([0.0, 0.08, 0.1, 0.5]), torch.tensor([0.0, 0.05, 0.2, 0.4])]
    choice = budget.choose_minmax(costs, relative, 11.0)  # level 0.1 costs 12; level 0.2 takes [2, 2] at 10 …
    assert choice.trade_off == pytest.approx(0.2)
    assert choice.indices == [1, 2] and choice.total_cost == 11.0  # … and the 1 left moves layer 1 to 0.08


def _trained_weights() -> dict[str, torch.Tensor]:
    """The weights every ``_run`` starts from (``_net`` is seeded), before compression."""
    return {name: m.weight.detach().double() for name, m in _net().named_modules() if name in LAYERS}


def _relative_errors(result) -> list[float]:
    """‖W − Δ‖²/‖W‖² of every layer, against the weights the run started from."""
    weights = _trained_weights()
    return [float(((weights[t.name] - t.scheme.decompress(s).double()) ** 2).sum() / (weights[t.name] ** 2).sum())
            for t, s in zip(result.tasks, result.states)]


@pytest.mark.parametrize("cost,ratio", [("params", 0.3), ("params", 0.5), ("flops", 0.35), ("flops", 0.6)])
def test_minmax_allocation_is_the_least_largest_relative_error_any_choice_reaches(cost, ratio):
    """low_rank's ``allocation: minmax`` against a brute-force scan of every layer's candidates."""
    import itertools

    _, result = _run({"cost": cost, "ratio": ratio}, options={"allocation": "minmax", "shape": "channel"})
    budget_total = result.history["target0_requested"].iloc[0]
    assert result.history["target0_achieved"].iloc[0] <= budget_total
    cost_model = get_registry().cost_model(cost)()
    weights, per_layer = _trained_weights(), []
    for task in result.tasks:
        w = weights[task.name].float()
        candidates = task.scheme.candidates(w, lcpress.CStepContext(mu=1.0, spec=task.spec))
        norm = float((w.double() ** 2).sum())
        per_layer.append([(cost_model.cost(task.spec, f), float(e) / norm)
                          for f, e in zip(candidates.forms, candidates.errors)])
    best = min(max(e for _, e in combo) for combo in itertools.product(*per_layer)
               if sum(c for c, _ in combo) <= budget_total)
    assert best > 0
    assert max(_relative_errors(result)) == pytest.approx(best, rel=1e-5)
    _, summed = _run({"cost": cost, "ratio": ratio}, options={"shape": "channel"})
    assert max(_relative_errors(summed)) >= best * (1 - 1e-5)  # the default (sum) is as balanced or less


def test_allocation_is_a_validated_option_of_low_rank():
    scheme = get_registry().scheme("low_rank")
    assert scheme().allocation == "sum"
    assert scheme(scheme.Options.from_dict({"allocation": "minmax"})).allocation == "minmax"
    with pytest.raises(lcpress.ConfigError, match="allocation"):
        scheme.Options.from_dict({"allocation": "even"})


def test_a_target_that_cannot_steer_the_choice_is_refused_or_said(caplog):
    """A table lookup costs 0 FLOPs, so a flops target cannot choose its form; a target at dense asks for nothing."""
    table = nn.Sequential(nn.Embedding(50, 16))
    config = {"tasks": [{"layers": ["0"], "scheme": "quantize", "options": {"k": None},
                         "target": {"cost": "flops", "ratio": 0.5}}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match=r"cost 0 FLOPs under 'flops' .*target: \{cost: params\}"):
        lcpress.compress(table, config, example_input=torch.randint(0, 50, (1, 4)), progress=False)
    mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config = {"tasks": [{"layers": ["*"], "target": {"cost": "params", "ratio": 1.0}}], "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(mlp, config, example_input=torch.randn(1, 16), progress=False)
    assert "is at or above the group's dense" in caplog.text and "asks for no saving" in caplog.text


def test_an_alpha_too_small_to_compress_anything_is_said_once(caplog):
    mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config = {"tasks": [{"layers": ["*"], "alpha": 1e-12, "options": {"rank_multiple": 1}}],
              "schedule": {"steps": 0, "mu0": 1.0}}
    with caplog.at_level("WARNING", logger="lcpress"):
        result = lcpress.compress(mlp, config, example_input=torch.randn(1, 16), progress=False)
    assert caplog.text.count("alpha = 1e-12 keeps every layer dense") == 1
    assert not any(r.realized for r in result.records)


def test_a_preview_with_dc_mu_zero_shows_the_target_s_choice_not_the_cheapest_forms():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    config = {"tasks": [{"layers": ["0", "2"], "options": {"rank_multiple": 1},
                         "target": {"cost": "flops", "ratio": 0.5}}], "schedule": {"steps": 2, "dc_mu": 0, "mu0": 1e-2}}
    table = lcpress.predict_costs(mlp, config, torch.randn(1, 32), progress=False).table
    flops = table.set_index("layer").loc[["0", "2"], ["flops_before", "flops_after"]].sum()
    assert 0.4 < flops["flops_after"] / flops["flops_before"] <= 0.5  # the cheapest forms are far below it

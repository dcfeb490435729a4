"""The LC loop: penalty, C steps, multipliers, history, failure paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcpress
from lcpress.config import LCConfig
from lcpress.core.engine import LCEngine
from lcpress.core.graph import trace
from lcpress.core.plan import plan_tasks, resolve
from lcpress.core.registry import get_registry
from lcpress.errors import CStepError


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _engine(model, tasks_cfg, train_fn=None, **schedule):
    config = LCConfig.from_dict({"tasks": tasks_cfg, "schedule": {"steps": 2, **schedule}})
    x = torch.randn(8, 20)
    graph = trace(model, x)
    registry = get_registry()
    tasks = plan_tasks(model, graph, resolve(config, registry))
    return LCEngine(model, tasks, config.schedule, train_fn, graph=graph,
                    cost_models={"params": registry.cost_model("params")()}, progress=False)


def test_penalty_step_moves_weights_towards_compressed():
    model = _mlp()

    def train_fn(model, penalty, step):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(5):
            opt.zero_grad()
            penalty().backward()  # the penalty alone: pure pull towards Δ(θ)
            opt.step()
        return 0.0

    engine = _engine(model, [{"layers": ["0", "2"], "options": {"rank": 2}}], train_fn, mu0=1.0)
    engine.c_step(0, 1.0)
    before = engine.distance()
    engine.l_step(1, 1.0)
    after = engine.distance()
    assert after < before * 0.9


def test_penalty_value_is_mu_half_squared_distance():
    model = _mlp()
    seen = {}

    def train_fn(model, penalty, step):
        seen["penalty"] = float(penalty().detach())
        seen["mu"] = step.mu

    engine = _engine(model, [{"layers": ["0"], "options": {"rank": 2}}], train_fn, mu0=0.5)
    engine.c_step(0, 0.5)
    d = engine.distance()
    engine.l_step(1, 0.5)
    assert seen["penalty"] == pytest.approx(0.5 * 0.5 * d**2, rel=1e-5)


def test_history_records_every_step_and_mu_schedule():
    model = _mlp()
    engine = _engine(model, [{"layers": ["*"], "options": {"rank": 4}}], lambda m, p, s: 1.0, mu0=0.01, factor=2.0)
    engine.eval_fn = lambda m: 0.5
    history = engine.run()
    assert list(history["step"]) == [0, 1, 2]
    assert list(history["mu"]) == pytest.approx([0.01, 0.01, 0.02])
    assert (history["metric"] == 0.5).all()
    assert history["cost_params"].notna().all()


def test_augmented_lagrangian_updates_multipliers():
    model = _mlp()
    engine = _engine(model, [{"layers": ["0"], "options": {"rank": 2}}], lambda m, p, s: None,
                     augmented_lagrangian=True)
    engine.run()
    lam = engine.multipliers[0]
    assert lam is not None and lam.shape == model[0].weight.shape and lam.abs().sum() > 0


def test_evaluation_sees_compressed_weights_and_restores_w():
    model = _mlp()
    engine = _engine(model, [{"layers": ["0"], "options": {"rank": 1}}])
    engine.c_step(0, 1.0)
    w = model[0].weight.detach().clone()
    with engine.compressed():
        assert torch.linalg.matrix_rank(model[0].weight.detach()) == 1
    assert torch.equal(model[0].weight.detach(), w)


def test_nan_weights_stop_the_c_step_with_advice():
    model = _mlp()
    engine = _engine(model, [{"layers": ["0"]}])
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(lcpress.LcpressError, match="NaN.*learning rate"):
        engine.c_step(0, 1.0)


def test_a_scheme_that_raises_is_named_with_layer_and_step():
    class Broken(lcpress.Scheme):
        name = "broken_for_test"

        def compress(self, w, ctx):
            raise RuntimeError("boom")

        def decompress(self, state):
            return state.tensors["w"]

    model = _mlp()
    engine = _engine(model, [{"layers": ["0"], "options": {"rank": 1}}])
    engine.tasks[0].scheme = Broken()
    with pytest.raises(CStepError, match=r"'broken_for_test'.*layer '0'.*LC step 3.*boom"):
        engine.c_step(3, 1.0)


@pytest.mark.parametrize("selection", [{"alpha": 1e-6, "cost": "params"}, {"target": {"cost": "params", "ratio": 0.5}}])
def test_direct_compression_at_zero_mu_takes_the_cheapest_forms_then_selects_by_error(selection):
    task = {"layers": ["0", "2"], "options": {"rank_multiple": 1}, **selection}
    engine = _engine(_mlp(), [task], None, mu0=1.0, dc_mu=0.0, steps=0)
    engine.run()
    assert engine.history[0]["mu"] == 1.0  # the path still starts at μ0
    assert {name: form.rank for name, form in engine.forms().items()} == {"0": 1, "2": 1}  # rank 1: the cheapest
    engine.c_step(1, 1.0)  # at μ > 0 the error counts again
    assert any(not isinstance(form, lcpress.LowRank) or form.rank > 1 for form in engine.forms().values())


def test_fixed_forms_are_the_same_projection_at_zero_mu():
    engines = [_engine(_mlp(), [{"layers": ["0"], "options": {"rank": 3}}], None, steps=0, **extra)
               for extra in ({}, {"dc_mu": 0.0})]
    for engine in engines:
        engine.run()
    assert torch.equal(engines[0].states[0].tensors["a"], engines[1].states[0].tensors["a"])


def test_cheapest_breaks_ties_by_error():
    from lcpress.core.budget import cheapest

    assert cheapest(torch.tensor([3.0, 1.0, 1.0, 2.0]), torch.tensor([0.0, 5.0, 4.0, 1.0])) == 2


def test_a_metric_that_is_not_a_number_is_a_warning_of_the_run():
    from lcpress.config import LCConfig
    from lcpress.runs.compress import run_warnings

    config = LCConfig.from_dict({"tasks": [{"layers": ["0"]}], "schedule": {"steps": 0}})
    said = run_warnings(config, [], 0.91, float("nan"), "accuracy")
    assert len(said) == 1 and "the compressed model's accuracy is nan" in said[0]


@pytest.mark.parametrize("task, probed", [
    ({"layers": ["0", "2"], "target": {"cost": "params", "ratio": 0.5}}, False),  # a budget: μ0 selects nothing
    ({"layers": ["0", "2"], "alpha": 1e-4}, True),  # α weighs cost against μ-weighted error
])
def test_direct_compression_measures_mu0_only_where_it_moves_the_choice(task, probed):
    """The gradient probe is a forward and backward pass over calibration data: 15% of a BERT direct compression."""
    calls = []
    engine = _engine(_mlp(), [task], steps=0, mu0="auto")
    engine.gradient_norm = lambda model, params: calls.append(1) or 1.0
    engine.run()
    assert bool(calls) == probed

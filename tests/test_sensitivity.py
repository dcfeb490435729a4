"""Measured sensitivity (``sensitivity: measured``): curves, probes, the allocation they drive, resume, failures."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import lcpress
from lcpress.core.engine import LCEngine
from lcpress.core.sensitivity import TIE_BREAK, Curve, curve, probes
from lcpress.reporting.plots import matplotlib_available
from lcpress.reporting.runinfo import read_run
from lcpress.runs.demo import digits_cnn, digits_loaders, train_dense


# ------------------------------------------------------------------ curves
def test_curve_interpolates_between_points_and_grows_in_proportion_past_the_last():
    c = curve([0.2, 0.6], [0.01, 0.05])
    at = c(torch.tensor([0.0, 0.1, 0.2, 0.4, 0.6, 1.2])) - TIE_BREAK * torch.tensor([0.0, 0.1, 0.2, 0.4, 0.6, 1.2])
    assert at.tolist() == pytest.approx([0.0, 0.005, 0.01, 0.03, 0.05, 0.10])


def test_curve_is_monotone_and_reads_negative_drops_as_none():
    c = curve([0.5, 0.1, 0.3, 0.3], [0.02, -0.001, 0.04, 0.01])  # unsorted, noisy, one error measured twice
    assert c.errors == [0.0, 0.1, 0.3, 0.5]
    assert c.drops == [0.0, 0.0, 0.04, 0.04]
    values = c(torch.linspace(0, 1, 101))
    assert bool((values[1:] >= values[:-1]).all())


def test_equal_drops_prefer_the_smaller_error():
    c = curve([0.1, 0.4], [0.0, 0.0])
    low, high = c(torch.tensor([0.05, 0.3])).tolist()
    assert 0 < low < high


def test_curve_round_trips_through_its_dict():
    c = curve([0.1, 0.3], [0.01, 0.02])
    assert Curve.from_dict(c.to_dict()) == c


# ------------------------------------------------------------------ probes
def test_probes_take_the_frontier_spread_over_the_cost_range_cheapest_first():
    costs = torch.tensor([100.0, 10.0, 20.0, 20.0, 30.0, 60.0, 90.0, 50.0, 150.0])
    errors = torch.tensor([0.0, 0.9, 0.5, 0.6, 0.7, 0.2, 0.05, 0.25, 0.01])  # 3, 4 dominated; 8 costs more than dense
    chosen = probes(costs, errors, 4)  # limits 10, 32.5, 55, 77.5: from the cheapest to the dense layer's cost
    assert chosen == [1, 2, 7, 5]
    assert probes(costs, errors, 100)[-1] == 6  # never the dense candidate, of zero error
    assert not {0, 3, 4, 8} & set(probes(costs, errors, 100))
    assert probes(torch.tensor([5.0]), torch.tensor([0.0]), 4) == []


# ------------------------------------------------------- the allocation it drives
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4))


def _only_first_layer_matters(reference: nn.Module):
    """A metric (higher is better) that sees the first layer's weight only: −‖W₀ − W₀(reference)‖²."""
    w0 = reference[0].weight.detach().clone().double()
    calls = []

    def metric(model: nn.Module) -> float:
        calls.append(1)
        return -float(((model[0].weight.detach().double() - w0) ** 2).sum())

    return metric, calls


def _compress(model, metric, target_ratio=0.5, **options):
    config = {"tasks": [{"layers": ["0", "2"], "target": {"cost": "params", "ratio": target_ratio},
                         "options": {"rank_multiple": 2, **options}}], "schedule": {"steps": 0}}
    return lcpress.compress(model, config, eval_fn=metric, example_input=torch.randn(1, 24), progress=False)


def test_measured_drops_are_the_metric_with_each_layer_alone_compressed():
    """The metric sees layer 0 alone: its measured drops are its exact squared errors, layer 2's are zero, so the
    budget goes to layer 0 and layer 2 takes its cheapest rank — where the weight error shares it between them."""
    reference = _mlp()
    metric, calls = _only_first_layer_matters(reference)
    measured = _compress(copy.deepcopy(reference), metric, sensitivity="measured", sensitivity_points=5)
    evaluations = len(calls)
    by_error = _compress(copy.deepcopy(reference), metric)
    assert evaluations - (len(calls) - evaluations) == 1 + 5 + 5  # the baseline and five probes per layer, once
    rank = {t.name: t.scheme.form(s) for t, s in zip(measured.tasks, measured.states)}
    rank_by_error = {t.name: t.scheme.form(s) for t, s in zip(by_error.tasks, by_error.states)}
    assert rank["2"].rank == 2  # the cheapest candidate: nothing the metric sees
    assert rank["0"].rank > rank_by_error["0"].rank and rank["2"].rank < rank_by_error["2"].rank
    assert measured.history["metric"].iloc[0] > by_error.history["metric"].iloc[0]
    assert set(measured.sensitivity) == {"0", "2"} and by_error.sensitivity == {}
    assert measured.sensitivity["2"]["drops"] == [0.0] * 6  # (0, 0) and five probes


def test_the_curves_hold_the_exact_drops_and_the_model_is_restored_between_probes():
    reference = _mlp()
    metric, _ = _only_first_layer_matters(reference)
    seen: dict[int, Curve] = {}
    original = LCEngine._measure_curves

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.update(self.curves)
        for task in self.tasks:  # after measuring, w is the reference's again
            assert torch.equal(task.params[0].detach(), reference.get_submodule(task.name).weight)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LCEngine, "_measure_curves", spy)
        _compress(copy.deepcopy(reference), metric, sensitivity="measured", sensitivity_points=4)
    w0 = reference[0].weight.detach().double()
    norm = float((w0 ** 2).sum())
    first, second = seen[0], seen[1]
    assert first.drops[1:] == pytest.approx([e * norm for e in first.errors[1:]], rel=1e-4)  # drop = ‖W₀ − Δ‖²
    assert len(first.errors) == 5 and all(d == 0 for d in second.drops)


def test_measured_sensitivity_needs_a_target_an_eval_fn_and_free_ranks():
    reference = _mlp()
    metric, _ = _only_first_layer_matters(reference)
    with pytest.raises(lcpress.LcpressError, match="give the task a target"):
        lcpress.compress(copy.deepcopy(reference), {"tasks": [{"layers": ["0"], "options": {"sensitivity": "measured"}}],
                                                    "schedule": {"steps": 0}},
                         eval_fn=metric, example_input=torch.randn(1, 24), progress=False)
    with pytest.raises(lcpress.LcpressError, match="pass eval_fn"):
        _compress(copy.deepcopy(reference), None, sensitivity="measured")
    with pytest.raises(lcpress.ConfigError, match="fixed rank"):
        _compress(copy.deepcopy(reference), metric, sensitivity="measured", rank=4)
    with pytest.raises(lcpress.ConfigError, match="sensitivity"):
        _compress(copy.deepcopy(reference), metric, sensitivity="loss")
    with pytest.raises(lcpress.LcpressError, match="the metric is nan with a layer compressed"):
        _compress(copy.deepcopy(reference), lambda m: 0.0 if torch.equal(m[0].weight, reference[0].weight)
                  else float("nan"), sensitivity="measured")


# ----------------------------------------------------------------- resume
CONFIG = {
    "tasks": [{"layers": ["2", "5", "8"], "target": {"cost": "flops", "ratio": 0.4},
               "options": {"rank_multiple": 8, "sensitivity": "measured", "sensitivity_points": 3}}],
    "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": 3},
    "train": {"epochs": 1, "lr": 0.02, "optimizer": "sgd", "momentum": 0.9},
    "seed": 3,
}


def test_a_resumed_run_keeps_its_curves_and_ends_where_an_uninterrupted_one_does(tmp_path, power_cut, monkeypatch):
    torch.manual_seed(0)
    dense = digits_cnn()
    train_dense(dense, digits_loaders(64, 0)[0], epochs=2, progress=False)

    def run(out, resume=False):
        return lcpress.compress(copy.deepcopy(dense), dict(CONFIG, output_dir=str(out)),
                                loaders=digits_loaders(64, 0), resume=resume, progress=False)

    full = run(tmp_path / "full")
    with power_cut(at=1):
        run(tmp_path / "cut")
    running = read_run(tmp_path / "cut")  # the interrupted run's report already has the curves, from its checkpoint
    assert not running.finished and running.sensitivity == full.sensitivity
    measured = []
    monkeypatch.setattr(LCEngine, "_measure_curves", lambda self, *a, **k: measured.append(1))
    resumed = run(tmp_path / "cut", resume=True)
    assert measured == []  # the curves came back from the checkpoint
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert full.history["metric"].tolist() == resumed.history["metric"].tolist()
    assert resumed.sensitivity == full.sensitivity and len(full.sensitivity) == 3
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["sensitivity"] == full.sensitivity
    if matplotlib_available():  # the report draws the curves
        assert "report-sensitivity.png" in [p.name for p in resumed.write_report().images]


def test_a_preview_of_a_measured_sensitivity_config_ranks_by_error_and_says_so(caplog):
    """predict_costs / lcpress costs have no metric to measure with: they used to refuse the config."""
    config = {"tasks": [{"layers": ["*"], "options": {"sensitivity": "measured", "rank_multiple": 1},
                         "target": {"cost": "params", "ratio": 0.4}}]}
    with caplog.at_level("WARNING", logger="lcpress"):
        prediction = lcpress.predict_costs(_mlp(), config, torch.randn(1, 24), progress=False)
    assert "this preview ranks them by relative error" in caplog.text
    assert prediction.table["params_after"].sum() <= 0.4 * prediction.table["params_before"].sum()

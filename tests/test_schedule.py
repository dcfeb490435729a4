"""The μ schedule: measured μ0, growth adapted to ‖w − Δ(θ)‖, honest warnings, resumable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcpress
from lcpress.config import ScheduleConfig
from lcpress.core.schedule import MAX_FACTOR, adaptive_factor, convergence_problem, initial_mu, next_mu


def test_auto_mu0_is_the_loss_gradient_over_the_distance():
    auto = ScheduleConfig()
    assert initial_mu(auto, gradient_norm=3.0, distance=6.0) == pytest.approx(0.5)
    assert initial_mu(auto, gradient_norm=None, distance=6.0) == 1e-3  # nothing to measure with: the fallback
    assert initial_mu(ScheduleConfig(mu0=0.2), gradient_norm=3.0, distance=6.0) == 0.2  # a number is a number


def test_fixed_schedule_is_geometric():
    config = ScheduleConfig(mu0=0.01, factor=2.0, steps=5)
    history = [{"mu": 0.01, "distance": 1.0, "scale": 1.0}]
    for k in range(1, 5):
        history.append({"mu": next_mu(config, history, k), "distance": 1.0, "scale": 1.0})
    assert [row["mu"] for row in history] == pytest.approx([0.01, 0.01, 0.02, 0.04, 0.08])


@pytest.mark.parametrize("distance, remaining", [(5.0, 4), (0.5, 1), (2.0, 9)])
def test_adaptive_growth_brings_the_distance_to_the_tolerance(distance, remaining):
    """With d ≈ G/μ, growing μ by the factor every remaining step lands d at tolerance·scale (within the cap)."""
    mu, scale, tolerance = 0.1, 10.0, 0.01
    factor = adaptive_factor(mu, distance, scale, tolerance, remaining)
    pull = mu * distance  # G
    final_distance = pull / (mu * factor**remaining)
    if factor < MAX_FACTOR:
        assert final_distance == pytest.approx(tolerance * scale)
    else:
        assert final_distance > tolerance * scale
    assert adaptive_factor(mu, 0.05, scale, tolerance, remaining) == 1.0  # already within: μ stays


def _dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(256, 16)
    data = torch.utils.data.TensorDataset(x, x[:, :4].argmax(1))
    train = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    lcpress.train_dense(model, train, epochs=20, lr=0.1, progress=False)
    train.generator.manual_seed(0)
    return model, train


def _run(schedule, steps=6, resume=False, **extra):
    model, train = _dense()
    config = {"tasks": [{"layers": ["0"], "target": {"cost": "params", "ratio": 0.4},
                         "options": {"rank_multiple": 2}}],
              "schedule": dict(schedule, steps=steps), "train": {"lr": 0.05}, **extra}
    return lcpress.compress(model, config, loaders=(train, train), resume=resume, progress=False)


def test_auto_schedule_converges_where_the_old_default_did_not():
    auto = _run({})
    old = _run({"mu0": 1e-3, "factor": 1.1})
    assert auto.history["distance"].iloc[-1] <= 0.1 * auto.history["scale"].iloc[-1]
    assert not any("did not converge" in w for w in auto.warnings)
    assert old.history["distance"].iloc[-1] > 0.5 * old.history["distance"].iloc[0]
    assert any("LC did not converge" in w and "schedule.factor" in w for w in old.warnings)
    assert "warning: LC did not converge" in old.summary()


def test_auto_schedule_resumes_on_the_same_path(tmp_path, monkeypatch):
    full = _run({}, output_dir=str(tmp_path / "full"))
    original = lcpress.LCEngine.l_step

    def interrupted(self, k, mu):
        if k == 3:
            raise KeyboardInterrupt
        return original(self, k, mu)

    monkeypatch.setattr(lcpress.LCEngine, "l_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run({}, output_dir=str(tmp_path / "cut"))
    monkeypatch.setattr(lcpress.LCEngine, "l_step", original)
    resumed = _run({}, output_dir=str(tmp_path / "cut"), resume=True)
    assert list(resumed.history["mu"]) == list(full.history["mu"])
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_convergence_problem_is_none_for_direct_compression():
    assert convergence_problem(ScheduleConfig(steps=0), [{"mu": 1, "distance": 5.0, "scale": 1.0}]) is None
    ok = [{"mu": 1, "distance": 5.0, "scale": 10.0}, {"mu": 2, "distance": 0.5, "scale": 10.0}]
    assert convergence_problem(ScheduleConfig(steps=1, tolerance=0.01), ok) is None
    assert "5.0% of ‖Δ(θ)‖" in convergence_problem(ScheduleConfig(steps=1, tolerance=0.001), ok)


def test_auto_mu0_does_not_divide_by_the_rounding_of_an_exact_direct_compression():
    auto = ScheduleConfig()
    assert initial_mu(auto, gradient_norm=3.0, distance=1e-7, scale=6.0) == pytest.approx(3.0 / (auto.tolerance * 6.0))
    assert initial_mu(auto, gradient_norm=3.0, distance=6.0, scale=6.0) == pytest.approx(0.5)  # far: G0/d0 as before


def test_a_rank_as_large_as_the_layer_trains_stably_under_auto_mu0(dense_mlp, digits):
    import copy

    import lcpress

    model = copy.deepcopy(dense_mlp)
    config = {"tasks": [{"layers": ["3"], "options": {"rank": 64, "rank_multiple": 1}}], "schedule": {"steps": 1},
              "train": {"epochs": 1}}
    result = lcpress.compress(model, config, loaders=digits, progress=False)
    assert result.history["mu"].iloc[0] < 100  # not G0 over float32 rounding (about 1e-6)
    assert result.metric > result.dense_metric - 0.05

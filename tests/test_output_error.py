"""The activation-aware C step (low_rank ``error: output``): exact output-space errors, optimality, the penalty
in the same metric, calibration, checkpoints, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcpress
from lcpress.config import LCConfig
from lcpress.core.engine import LCEngine
from lcpress.core.graph import trace
from lcpress.core.moments import MomentCollector, input_metric, input_vectors
from lcpress.core.plan import plan_tasks, resolve
from lcpress.core.registry import get_registry
from lcpress.errors import ConfigError, LcpressError

SCHEME = get_registry().scheme("low_rank")


def _moment(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    collector = MomentCollector({0: module})
    with collector.collecting(), torch.no_grad():
        module(x)
    return collector.take()[0]


def _compress(w, metric, index, **options):
    """Candidates of the output-error scheme, then the C step for candidate ``index``."""
    scheme = SCHEME(SCHEME.Options(error="output", rank_multiple=1, **options))
    ctx = lcpress.CStepContext(mu=1.0, input_metric=metric)
    ctx.candidates = scheme.candidates(w, ctx)
    ctx.choice = index
    return ctx.candidates, scheme.decompress(scheme.compress(w, ctx))


def _correlated_inputs(n: int, dim: int) -> torch.Tensor:
    return torch.randn(n, dim) @ torch.randn(dim, dim) + 0.3 * torch.randn(dim)


def test_claimed_error_is_the_measured_output_error_of_a_linear_layer():
    layer = nn.Linear(24, 16)
    x = _correlated_inputs(400, 24)
    moment = _moment(layer, x)
    scale = float(torch.linalg.eigvalsh(moment)[-1])  # the metric is scaled to a largest eigenvalue of 1
    w = layer.weight.detach()
    for index in (1, 5, 10, 15):
        candidates, delta = _compress(w, input_metric(moment, 0.0), index)
        measured = float(((w - delta).double() @ x.double().T).pow(2).sum())
        assert float(candidates.errors[index]) * scale * len(x) == pytest.approx(measured, rel=1e-4)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 12, 3, padding=1),
    nn.Conv2d(3, 12, (3, 2), stride=2, dilation=(1, 2), padding=(1, 0)),
    nn.Conv2d(3, 12, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(3, 12, 4, padding="same"),
], ids=["padded", "strided-dilated", "reflect", "same"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's note on the even kernel
def test_claimed_error_is_the_measured_output_error_of_a_conv(conv):
    x = torch.randn(6, 3, 9, 10).cumsum(dim=3)  # correlated neighbouring pixels
    moment = _moment(conv, x)
    rows = input_vectors(conv, x).shape[0]
    assert rows == 6 * conv(x).shape[2] * conv(x).shape[3]
    scale = float(torch.linalg.eigvalsh(moment)[-1])
    w = conv.weight.detach()
    for index in (2, 9):
        candidates, delta = _compress(w, input_metric(moment, 0.0), index)
        with torch.no_grad():
            measured = float((conv(x) - conv._conv_forward(x, delta, conv.bias)).double().pow(2).sum())
        assert float(candidates.errors[index]) * scale * rows == pytest.approx(measured, rel=1e-3)


def test_output_error_beats_weight_error_on_outputs_and_loses_on_weights():
    """Each C step is optimal in its own metric, at every rank."""
    layer = nn.Linear(32, 24, bias=False)
    x = _correlated_inputs(300, 32)
    metric = input_metric(_moment(layer, x), 0.0)
    w = layer.weight.detach().double()
    plain = torch.linalg.svd(w, full_matrices=False)
    for rank in range(1, 24):
        _, whitened = _compress(layer.weight.detach(), metric, rank)
        truncated = (plain.U[:, :rank] * plain.S[:rank]) @ plain.Vh[:rank]
        out = lambda d: float(((w - d.double()) @ x.double().T).pow(2).sum())  # noqa: E731
        assert out(whitened) <= out(truncated) * (1 + 1e-6)
        assert float((w - whitened.double()).pow(2).sum()) >= float((w - truncated).pow(2).sum()) * (1 - 1e-6)


def test_isotropic_inputs_give_the_weight_space_c_step():
    w = torch.randn(10, 20)
    metric = input_metric(torch.eye(20, dtype=torch.float64) * 3.0, 0.0)
    candidates, delta = _compress(w, metric, 4)
    weight = SCHEME(SCHEME.Options(rank_multiple=1)).candidates(w, lcpress.CStepContext(mu=1.0))
    torch.testing.assert_close(candidates.errors, weight.errors)
    s = torch.linalg.svd(w.double(), full_matrices=False)
    torch.testing.assert_close(delta.double(), (s.U[:, :4] * s.S[:4]) @ s.Vh[:4], atol=1e-5, rtol=1e-5)


def test_damping_moves_the_metric_towards_weight_space():
    moment = torch.diag(torch.tensor([4.0, 1.0, 1e-6], dtype=torch.float64))
    metric = input_metric(moment, 0.5)
    torch.testing.assert_close(torch.diagonal(metric), torch.diagonal(moment) / 4.0 + 0.5)


def test_the_metric_is_nowhere_stiffer_than_weight_space():
    """Inputs with a dominant mean (after a ReLU): the penalty's curvature stays ≤ 1 + δ in every direction."""
    x = torch.relu(torch.randn(2000, 64)) + 1.0
    metric = input_metric((x.T @ x).double() / len(x), 0.01)
    eigenvalues = torch.linalg.eigvalsh(metric)
    assert float(eigenvalues[-1]) == pytest.approx(1.01)
    assert float(eigenvalues[0]) >= 0.01 - 1e-12


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _engine(model, options, train_fn=None, calibrate=None, **schedule):
    config = LCConfig.from_dict({"tasks": [{"layers": ["0", "2"], "options": options}],
                                 "schedule": {"steps": 2, **schedule}})
    graph = trace(model, torch.randn(8, 20))
    tasks = plan_tasks(model, graph, resolve(config, get_registry()))
    return LCEngine(model, tasks, config.schedule, train_fn, graph=graph, progress=False, calibrate=calibrate)


def test_penalty_is_measured_in_the_input_metric():
    model = _mlp()
    inputs = torch.randn(64, 20) @ torch.randn(20, 20)
    seen = {}

    def train_fn(model, penalty, step):
        seen["penalty"] = float(penalty().detach())
        model(inputs)  # the L step's forward passes give the next C step its metric

    engine = _engine(model, {"rank": 4, "error": "output", "damping": 0.0}, train_fn,
                     calibrate=lambda m: m(inputs), mu0=0.5)
    engine.calibrate_metrics()
    engine.c_step(0, 0.5)
    engine.l_step(1, 0.5)
    expected = 0.0
    for task, metric in zip(engine.tasks, engine.metrics):
        d = (task.weight() - engine._delta(engine.tasks.index(task), 1)).detach().double()
        expected += float(torch.trace(d @ metric @ d.T))
    assert seen["penalty"] == pytest.approx(0.5 * 0.5 * expected, rel=1e-5)
    hidden = model[1](model[0](inputs))  # layer 2's metric: the second moment of what it reads
    moment = (hidden.T @ hidden).double() / len(inputs)
    torch.testing.assert_close(engine.metrics[1], moment / torch.linalg.eigvalsh(moment)[-1], rtol=1e-4, atol=1e-6)


def test_distance_and_scale_of_an_output_space_task_are_in_its_metric():
    """‖w − Δ‖ in the history is the penalty's norm: tr(D Σ Dᵀ) for output error, Frobenius for weight error."""
    inputs = torch.randn(64, 20) @ torch.randn(20, 20)
    for error in ("output", "weight"):
        engine = _engine(_mlp(), {"rank": 4, "error": error, "damping": 0.0}, calibrate=lambda m: m(inputs), mu0=0.5)
        engine.calibrate_metrics()
        engine.c_step(0, 0.5)
        distance, scale = 0.0, 0.0
        for i, task in enumerate(engine.tasks):
            delta = engine._delta(i, engine.next_step).double()
            d = task.weight().detach().double() - delta
            metric = engine.metrics[i] if error == "output" else torch.eye(d.shape[1], dtype=torch.float64)
            distance += float(torch.trace(d @ metric @ d.T))
            scale += float(torch.trace(delta @ metric @ delta.T))
        assert engine.distance() == pytest.approx(distance**0.5, rel=1e-6)
        assert engine.scale() == pytest.approx(scale**0.5, rel=1e-6)
        assert engine.distance_and_scale() == pytest.approx((distance**0.5, scale**0.5), rel=1e-6)


def test_calibration_is_required_and_the_message_says_how():
    engine = _engine(_mlp(), {"rank": 4, "error": "output"})
    with pytest.raises(LcpressError, match="calibration="):
        engine.run()


def test_output_error_needs_the_channel_shape():
    with pytest.raises(ConfigError, match="shape: channel"):
        lcpress.load_config({"tasks": [{"layers": ["*"], "options": {"error": "output", "shape": "input"}}]})


def test_compress_with_output_error_meets_the_target(digits):
    train, test = digits
    model = lcpress.digits_cnn()
    config = {"tasks": [{"layers": ["2", "5"], "options": {"error": "output"},
                         "target": {"cost": "flops", "ratio": 0.4}}],
              "schedule": {"mu0": 1e-2, "factor": 2.0, "steps": 1}, "train": {"epochs": 1}, "calibration_batches": 2}
    result = lcpress.compress(model, config, loaders=(train, test), progress=False)
    row = result.history.iloc[-1]
    assert row["target0_achieved"] <= row["target0_requested"]
    assert result.max_abs_error < 1e-4


def test_a_restored_engine_continues_with_the_same_metrics():
    inputs = torch.randn(64, 20) @ torch.randn(20, 20)

    def train_fn(model, penalty, step):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(3):
            opt.zero_grad()
            (model(inputs).pow(2).mean() + penalty()).backward()
            opt.step()

    options = {"rank": 4, "error": "output"}
    straight = _engine(_mlp(), options, train_fn, calibrate=lambda m: m(inputs), mu0=0.1)
    straight.run()
    first = _engine(_mlp(), options, train_fn, calibrate=lambda m: m(inputs), mu0=0.1, steps=1)
    first.run()
    tensors, meta = first.snapshot()
    resumed = _engine(_mlp(), options, train_fn, calibrate=lambda m: m(inputs), mu0=0.1)
    resumed.restore(tensors, meta)
    torch.testing.assert_close(resumed.metrics, first.metrics, rtol=0, atol=0)
    resumed.run()
    for a, b in zip(resumed.states, straight.states):
        torch.testing.assert_close(a.tensors, b.tensors, rtol=0, atol=0)


def test_half_precision_inputs_give_the_second_moment_of_float64():
    """Σ x xᵀ of float16 inputs of size ~60 passes float16's 65,504 after a few rows: it is summed in float64."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 8).half()
    x = (torch.randn(64, 32) * 60).half()
    exact = x.double().T @ x.double() / 64
    assert torch.allclose(_moment(layer, x), exact, rtol=1e-12)


def test_inputs_that_hold_inf_are_named_by_layer_before_the_c_step():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(16, 8)
    x[3, 2] = float("inf")
    calibration = [(x, torch.zeros(16, dtype=torch.long))]
    config = {"tasks": [{"layers": ["2"], "options": {"error": "output", "rank": 2}}], "schedule": {"steps": 0}}
    with pytest.raises(LcpressError, match=r"layer '2': its inputs hold NaN or infinite values"):
        lcpress.compress(model, config, example_input=x[:2], calibration=calibration, progress=False)

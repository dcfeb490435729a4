"""BatchNorm models compress well from defaults: statistics re-estimated for Δ(θ), and a schedule that converges."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lcpress
from lcpress.runs.batchnorm import batchnorm_layers, recalibrate


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus a shortcut (1×1 stride-2 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.short is None else self.short(x)))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.layer1, self.layer2 = Block(24, 24), Block(24, 48, 2)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    with _one_thread():
        model = SmallResNet()
        lcpress.train_dense(model, digits[0], epochs=12, lr=0.05, progress=False)
    return model


class _one_thread:
    """A network this small trains faster on one thread than on two contending ones."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def test_a_batchnorm_resnet_compressed_from_defaults_keeps_dense_accuracy(trained, digits):
    """The issue's bar: a BatchNorm residual model, compressed from defaults to 50% FLOPs, within a point of dense."""
    model = copy.deepcopy(trained)
    config = {"tasks": [{"layers": ["*"], "target": {"cost": "flops", "ratio": 0.5}}]}
    with _one_thread():
        result = lcpress.compress(model, config, loaders=digits, progress=False)
    assert result.totals["flops_after"] <= 0.5 * result.totals["flops_before"]
    assert result.metric >= result.dense_metric - 0.01, result.summary()
    history = result.history
    assert history["distance"].iloc[-1] <= 0.1 * history["scale"].iloc[-1]  # the LC path converged …
    assert not result.warnings  # … and nothing is reported wrong
    assert history["metric"].min() > 0.9  # no step evaluates Δ(θ) with the dense model's statistics


def test_recalibration_computes_the_statistics_of_the_data(trained, digits):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.stem[0].weight.mul_(3.0)  # weights that no longer match the statistics
    used = recalibrate(model, digits[0], batches=1000)
    bn = model.stem[1]
    x = torch.cat([b[0] for b in DataLoader(digits[0].dataset, batch_size=10_000)])
    with torch.no_grad():
        activations = model.stem[0](x)
    mean = activations.mean(dim=(0, 2, 3))
    assert used == len(digits[0])
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    assert model.training is trained.training and bn.momentum == trained.stem[1].momentum


def test_recalibration_leaves_the_training_data_order_alone(digits):
    loader = DataLoader(TensorDataset(torch.randn(40, 1, 8, 8), torch.zeros(40).long()), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    before = loader.generator.get_state()
    recalibrate(SmallResNet(), loader, batches=5)
    assert torch.equal(loader.generator.get_state(), before)


def test_statistics_are_saved_with_the_model_and_can_be_switched_off(trained, digits, tmp_path):
    config = {"tasks": [{"layers": ["layer1.*", "layer2.conv*"], "options": {"rank": 8}}], "schedule": {"steps": 0},
              "output_dir": str(tmp_path / "run")}
    on = lcpress.compress(copy.deepcopy(trained), config, loaders=digits, progress=False)
    off_config = dict(config, batchnorm={"recalibrate": False}, output_dir=str(tmp_path / "off"))
    off = lcpress.compress(copy.deepcopy(trained), off_config, loaders=digits, progress=False)
    dense_stats = trained.layer1.bn2.running_var
    assert torch.equal(off.model.layer1.bn2.running_var, dense_stats)
    assert not torch.allclose(on.model.layer1.bn2.running_var, dense_stats)
    assert on.metric > off.metric  # what the issue measured: stale statistics cost accuracy
    loaded = lcpress.load(tmp_path / "run" / "model.safetensors", model=SmallResNet())
    torch.testing.assert_close(loaded.layer1.bn2.running_var, on.model.layer1.bn2.running_var)


def test_evaluations_do_not_change_the_statistics_the_l_steps_train_with(trained, digits):
    seen = []

    def train_fn(model, penalty, step):
        seen.append(model.layer1.bn1.running_mean.clone())

    config = {"tasks": [{"layers": ["layer1.conv1"], "options": {"rank": 8}}], "schedule": {"steps": 2, "mu0": 0.1}}
    model = copy.deepcopy(trained)
    lcpress.compress(model, config, train_fn, lambda m: 0.0, calibration=digits[0], example_input=torch.zeros(1, 1, 8, 8),
                     progress=False)
    assert all(torch.equal(s, trained.layer1.bn1.running_mean) for s in seen)  # untouched by the evaluations


def test_without_data_a_batchnorm_model_is_warned_about(trained, caplog):
    config = {"tasks": [{"layers": ["layer1.conv1"], "options": {"rank": 8}}], "schedule": {"steps": 0}}
    lcpress.compress(copy.deepcopy(trained), config, example_input=torch.zeros(1, 1, 8, 8), progress=False)
    assert "has 6 BatchNorm layers, but lcpress has no training batches" in caplog.text
    assert len(batchnorm_layers(trained)) == 6  # stem, two per block, the shortcut


def test_batchnorm_statistics_from_one_sample_batches_are_refused_with_the_fix():
    import lcpress

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(4, 8)
    with pytest.raises(lcpress.LcpressError, match=r"a batch of one sample has no spread .*at least 2 samples"):
        lcpress.compress(model, {"tasks": [{"layers": ["3"], "options": {"rank": 1}}], "schedule": {"steps": 0}},
                         example_input=x[:1], calibration=x[:1], progress=False)

"""lcpress.compress from a notebook: user train/eval functions, budgets, results."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lcpress


def _data(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return x, y


def _trained_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_compress_with_user_functions_realizes_in_place():
    model = _trained_mlp()
    x, y = _data()
    calls = []

    def train_fn(model, penalty, step):
        calls.append(step)
        opt = torch.optim.SGD(model.parameters(), lr=0.05 * 0.9**step.index)
        for _ in range(10):
            loss = F.cross_entropy(model(x), y) + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    def eval_fn(model):
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    config = {
        "tasks": [{"layers": ["0", "2"], "options": {"rank_multiple": 4}, "target": {"cost": "params", "ratio": 0.4}}],
        "schedule": {"mu0": 1e-2, "factor": 1.5, "steps": 3},
    }
    result = lcpress.compress(model, config, train_fn, eval_fn, example_input=x[:1])
    assert [c.index for c in calls] == [0, 1, 2]
    assert result.model is model
    assert isinstance(model[2], nn.Sequential)  # realized in place, name kept
    assert isinstance(result.history, pd.DataFrame) and list(result.history["step"]) == [0, 1, 2, 3]
    assert {"mu", "train_loss", "distance", "metric", "cost_params", "cost_flops"} <= set(result.history.columns)
    dense_params = 32 * 64 + 64 + 64 * 64 + 64
    compressed = result.layers.set_index("layer").loc[["0", "2"], "params_after"].sum()
    assert compressed <= 0.4 * dense_params
    assert result.max_abs_error < 1e-5
    assert result.metric == pytest.approx(eval_fn(model), abs=1e-6)
    assert result.metric >= result.dense_metric - 0.1


def test_direct_compression_only_needs_no_training():
    model = _trained_mlp()
    x, _ = _data()
    result = lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 8}}], "schedule": {"steps": 0}},
                              example_input=x[:4])
    assert len(result.history) == 1
    assert [r.realized for r in result.records] == [True, True, False]  # 64→2 at rank 8 would cost more than dense
    assert "rank 8" in result.summary()


def test_loaders_give_default_trainer_and_accuracy(digits):
    from lcpress.demo import digits_cnn

    train, test = digits
    model = digits_cnn()
    result = lcpress.compress(
        model,
        {"tasks": [{"layers": ["8"], "options": {"rank": 16}}], "schedule": {"steps": 1}, "train": {"epochs": 1}},
        loaders=(train, test),
    )
    assert 0.0 <= result.metric <= 1.0
    assert result.history["train_loss"].iloc[1] > 0

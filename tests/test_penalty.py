"""The L-step penalty: the fused node equals the plain expression, in value and in gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lcpress.core.penalty import QuadraticPenalty


def _plain(params, targets, mu):
    return 0.5 * mu * sum(torch.sum((p - t) ** 2) for p, t in zip(params, targets))


def _grads(value, params):
    for p in params:
        p.grad = None
    value.backward()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("mu", [1e-3, 0.7, 45.0])
def test_value_and_gradient_equal_the_plain_expression(mu):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(30, 20)), nn.Parameter(torch.randn(7, 3, 3, 3)), nn.Parameter(torch.randn(5))]
    targets = [torch.randn_like(p) for p in params]
    plain = _plain(params, targets, mu)
    fused = QuadraticPenalty(params, targets, mu)()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, b in zip(_grads(3.0 * fused, params), _grads(3.0 * plain, params)):  # the incoming gradient scales too
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_gradient_is_taken_where_the_penalty_was_evaluated_and_adds_to_the_loss():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(4, 4))
    target = torch.zeros(4, 4)
    penalty = QuadraticPenalty([w], [target], 2.0)
    value = penalty() + (3 * w).sum()  # a loss of gradient 3 plus the penalty's μ(w − 0)
    expected = 3 + 2.0 * w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)  # an optimizer step between forward and backward must not change this gradient
    value.backward()
    torch.testing.assert_close(w.grad, expected)


def test_targets_are_fixed_and_frozen_parameters_get_no_gradient():
    w, frozen = nn.Parameter(torch.ones(3)), torch.ones(3)  # a plain tensor: requires no gradient
    target = torch.zeros(3, requires_grad=True)
    value = QuadraticPenalty([w, frozen], [target, torch.zeros(3)], 1.0)()
    value.backward()
    assert target.grad is None and frozen.grad is None
    torch.testing.assert_close(w.grad, torch.ones(3))
    assert value.item() == pytest.approx(3.0)


def test_no_parameters_is_a_zero_penalty_and_mismatched_shapes_are_refused():
    assert float(QuadraticPenalty([], [], 1.0)()) == 0.0
    with pytest.raises(ValueError, match="target of shape"):
        QuadraticPenalty([nn.Parameter(torch.ones(3))], [torch.ones(4)], 1.0)


def test_a_detached_penalty_is_named_instead_of_silently_not_pulling(dense_mlp, digits):
    import copy

    import lcpress

    def train_fn(model, penalty, step):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for x, y in digits[0]:
            loss = torch.nn.functional.cross_entropy(model(x), y) + penalty().detach()
            opt.zero_grad()
            loss.backward()
            opt.step()

    config = {"tasks": [{"layers": ["3"], "options": {"rank": 8}}], "schedule": {"steps": 1}}
    with pytest.raises(lcpress.LcpressError, match=r"called penalty\(\) but no gradient flowed back through it"):
        lcpress.compress(copy.deepcopy(dense_mlp), config, train_fn, example_input=torch.randn(1, 64),
                         progress=False)

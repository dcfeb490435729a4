"""Channel dependency groups and the ``channels`` scheme: detection, the coupled C step, realization, files."""

from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import sdpa_flop_count

import lcpress
from lcpress import channel_groups, kept_sizes
from lcpress.core.coupled import CoupledPricing
from lcpress.core.measured import form_module
from lcpress.core.registry import get_registry

FLOPS = get_registry().cost_model("flops")()
PARAMS = get_registry().cost_model("params")()


class Block(nn.Module):
    """A ResNet basic block after a stem: conv-BN-ReLU-conv-BN, plus the identity."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(2, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 6, 1), nn.Conv2d(10, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x).relu(), self.b(x)], 1))


class Attention(nn.Module):
    """A pre-norm transformer block: two heads of 4, a feed-forward width of 12."""

    def __init__(self, d: int = 8, heads: int = 2, hidden: int = 12) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm1, self.norm2, self.heads = nn.LayerNorm(d), nn.LayerNorm(d), heads
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (m(h).view(b, t, -1, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


def flat_cnn() -> nn.Sequential:
    """conv → BN → ReLU → depthwise conv → flatten → Linear → Linear: a model lcpress.load rebuilds on its own."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 8, 3)), ("bn", nn.BatchNorm2d(8)), ("relu", nn.ReLU()),
        ("dw", nn.Conv2d(8, 8, 3, padding=1, groups=8)), ("flat", nn.Flatten()),
        ("fc1", nn.Linear(8 * 2 * 2, 16)), ("act", nn.Tanh()), ("fc2", nn.Linear(16, 5)),
    ]))


def _randomize_norms(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def _groups(model, x):
    return {tuple(g.producers): g for g in channel_groups(model, x).groups}


def _slices(group):
    return {(s.module, s.role): s.indices for s in group.slices}


# ----------------------------------------------------------------- detection
def test_residual_block_groups_every_producer_of_the_sum():
    groups = _groups(Block(), torch.randn(1, 2, 5, 5))
    inner = groups[("conv1",)]
    assert _slices(inner) == {("conv1", "rows"): [[c] for c in range(6)], ("bn1", "rows"): [[c] for c in range(6)],
                              ("conv2", "columns"): [[c] for c in range(6)]}
    stream = groups[("conv2", "stem")]  # the residual sum: stem and conv2 rows are one channel
    assert set(_slices(stream)) == {("stem", "rows"), ("bn", "rows"), ("conv2", "rows"), ("bn2", "rows"),
                                    ("conv1", "columns"), ("head", "columns")}
    assert not inner.blocked and not stream.blocked
    assert groups[("head",)].blocked == "reaches the model output"


def test_concatenation_gives_each_producer_its_offset_in_the_consumer():
    groups = _groups(Concat(), torch.randn(1, 1, 3, 3))
    assert _slices(groups[("a",)])[("c", "columns")] == [[0], [1], [2], [3]]
    assert _slices(groups[("b",)])[("c", "columns")] == [[4], [5], [6], [7], [8], [9]]


def test_flatten_makes_a_channel_a_block_of_features_and_depthwise_convs_follow():
    groups = _groups(flat_cnn(), torch.randn(1, 1, 4, 4))
    conv = groups[("conv",)]
    assert conv.followers == ["bn", "dw"]
    assert _slices(conv)[("dw", "rows")] == [[c] for c in range(8)]
    assert _slices(conv)[("fc1", "columns")] == [list(range(4 * c, 4 * c + 4)) for c in range(8)]
    assert _slices(groups[("fc1",)])[("fc2", "columns")] == [[c] for c in range(16)]


def test_transformer_block_groups_heads_and_the_feed_forward_width():
    groups = _groups(Attention(), torch.randn(1, 3, 8))
    heads = groups[("k", "q", "v")]
    assert heads.channels == 2 and heads.unit == 4
    for name in ("q", "k", "v"):
        assert _slices(heads)[(name, "rows")] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _slices(heads)[("o", "columns")] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _slices(groups[("up",)])[("down", "columns")] == [[c] for c in range(12)]
    assert "not pruned" in groups[("o",)].blocked and "not pruned" in groups[("down",)].blocked
    assert kept_sizes(heads, 4) == [1, 2]  # a head is 4 rows wide: any head count is a multiple of 4
    assert kept_sizes(heads, 8) == [2]     # only even head counts are multiples of 8 rows


def test_attention_heads_carry_their_attention_core_as_a_priced_site():
    found = channel_groups(Attention(), torch.randn(2, 3, 8))
    heads = next(g for g in found.groups if g.producers == ["k", "q", "v"])
    (site, indices), = [(s.module, s.indices) for s in heads.slices if s.role == "heads"]
    assert indices == [[0], [1]]
    spec = found.attention[site]
    assert (spec.kind, spec.in_channels, spec.out_channels, spec.input_shape, spec.groups, spec.params) == \
        ("attention", 8, 8, (2, 3, 8), 2, 0)
    # QKᵀ and AV as torch's formula for scaled_dot_product_attention counts them
    assert spec.flops == sdpa_flop_count((2, 2, 3, 4), (2, 2, 3, 4), (2, 2, 3, 4))
    one_head = lcpress.Resized(4, 4).primitives(spec)[0]
    assert (one_head.groups, one_head.flops) == (1, spec.flops // 2)
    module = form_module(spec, lcpress.Resized(4, 4))
    assert module(torch.randn(2, 3, 4)).shape == (2, 3, 4)


# -------------------------------------------------------------- the C step
def _engine(model, x, **task):
    config = lcpress.load_config({"tasks": [{"layers": ["*"], "scheme": "channels", **task}],
                                  "schedule": {"steps": 0, "mu0": 1e-3}})
    planned = lcpress.core.plan.plan(model, config, x)
    engine = lcpress.LCEngine(model, planned.tasks, config.schedule, None, graph=planned.graph,
                              cost_models=planned.cost_models, progress=False)
    return engine, planned.tasks[0]


def _objective(pricing, errors, choice, t):
    return t * pricing.total(choice) + sum(float(e[j]) for e, j in zip(errors, choice))


def test_group_c_step_equals_a_brute_force_scan_of_alpha_cost_plus_error():
    torch.manual_seed(0)
    model, x = flat_cnn(), torch.randn(1, 1, 4, 4)
    alpha, mu = 3e-3, 1e-3
    engine, task = _engine(model, x, options={"multiple": 1}, alpha=alpha)
    mu = engine.schedule.mu0
    contexts = engine.candidates(0, mu)
    engine._select(0, mu, engine.c_step_inputs(0, mu), contexts)
    coupled = contexts[0].candidates
    pricing = CoupledPricing(task.layer_specs, coupled, FLOPS)
    t = 2 * alpha / mu
    scan = [(t * pricing.total(c) + mu / 2 * 2 / mu * sum(float(p.errors[j]) for p, j in zip(coupled.parts, c)), c)
            for c in itertools.product(*(range(len(p.forms)) for p in coupled.parts))]
    best = min(scan)[1]
    chosen = contexts[0].choice
    errors = [p.errors for p in coupled.parts]
    assert _objective(pricing, errors, chosen, t) == pytest.approx(_objective(pricing, errors, list(best), t), rel=1e-12)
    assert any(j != pricing.dense[i] for i, j in enumerate(chosen))  # the trade-off does prune something


def test_a_head_group_is_priced_with_the_attention_products_it_removes():
    x = torch.randn(2, 3, 8)
    engine, task = _engine(Attention(), x, options={"multiple": 1}, target={"cost": "flops", "ratio": 0.5})
    coupled = engine.candidates(0, 1e-3)[0].candidates
    pricing = CoupledPricing(task.layer_specs, coupled, FLOPS)
    part = next(p for p, cuts in enumerate(coupled.cuts) if any(k.endswith("attention_core") for k in cuts[0]))
    (site,) = [k for k in coupled.cuts[part][0] if k.endswith("attention_core")]
    one_head = coupled.parts[part].forms.index(next(f for f in coupled.parts[part].forms if f.kept == 1))
    saved = float(pricing.prices(pricing.dense)[part][pricing.dense[part]] - pricing.prices(pricing.dense)[part][one_head])
    rows, positions = 4, 2 * 3  # one head: 4 rows of q, k, v and 4 columns of o, at every (batch, token)
    projections = 2 * positions * (3 * rows * 8 + 8 * rows)
    assert saved == projections + task.layer_specs[site].flops / 2
    assert pricing.total(pricing.dense) == sum(spec.flops for spec in task.layer_specs.values())


def test_group_errors_are_the_exact_distance_to_delta():
    torch.manual_seed(0)
    model, x = _randomize_norms(Block()), torch.randn(1, 2, 5, 5)
    engine, task = _engine(model, x, options={"multiple": 2, "allocation": "sum"},
                           target={"cost": "flops", "ratio": 0.5})
    engine.c_step(0, 1e-3)
    w = task.weight().detach()
    delta = task.scheme.decompress(engine.states[0])
    chosen = engine.selection[0].indices
    coupled_errors = engine.candidates(0, 1e-3)[0].candidates.parts
    for part, j, entry in zip(coupled_errors, chosen, engine.states[0].meta["groups"]):
        assert part.forms[j].kept == entry["kept"]
    # the groups this choice prunes share no entry (a conv between two pruned groups would count its
    # corner twice): ‖w − Δ‖² is the sum of the chosen candidates' errors
    total = sum(float(p.errors[j]) for p, j in zip(coupled_errors, chosen))
    assert float(((w.double() - delta.double()) ** 2).sum()) == pytest.approx(total, rel=1e-9)
    assert engine.selection[0].total_cost <= 0.5 * engine.selection[0].dense_cost


@pytest.mark.parametrize("make, x, allocation, ratio, multiple", [
    (Concat, torch.randn(1, 1, 4, 4), "sum", 0.4, 1),
    (lambda: _randomize_norms(flat_cnn()), torch.randn(1, 1, 4, 4), "sum", 0.3, 1),  # the hull stops short
    (lambda: _randomize_norms(flat_cnn()), torch.randn(1, 1, 4, 4), "sum", 0.4, 2),  # of these budgets
    (lambda: _randomize_norms(Block()), torch.randn(1, 2, 5, 5), "minmax", 0.7, 2),
    (lambda: _randomize_norms(flat_cnn()), torch.randn(1, 1, 4, 4), "minmax", 0.5, 1),
])
def test_coupled_selection_leaves_no_single_move_that_fits_the_budget_and_helps(make, x, allocation, ratio, multiple):
    torch.manual_seed(0)
    engine, task = _engine(make(), x, options={"multiple": multiple, "allocation": allocation},
                           target={"cost": "flops", "ratio": ratio})
    contexts = engine.candidates(0, 1e-3)
    engine._select(0, 1e-3, engine.c_step_inputs(0, 1e-3), contexts)
    choice, coupled = engine.selection[0], contexts[0].candidates
    pricing = CoupledPricing(task.layer_specs, coupled, FLOPS)
    # minmax spends what its level leaves on the summed relative error
    errors = [p.errors.double() / (s if allocation == "minmax" else 1.0) for p, s in zip(coupled.parts, coupled.scales)]
    assert choice.total_cost == pricing.total(choice.indices) <= choice.budget
    error = sum(float(e[j]) for e, j in zip(errors, choice.indices))
    for p, part in enumerate(coupled.parts):  # no single group can lower the error and still fit the budget
        for j in range(len(part.forms)):
            other = list(choice.indices)
            other[p] = j
            if pricing.total(other) <= choice.budget:
                assert sum(float(e[i]) for e, i in zip(errors, other)) >= error - 1e-12


def _minmax_selection(model, x, ratio):
    engine, task = _engine(model, x, options={"multiple": 1, "allocation": "minmax"},
                           target={"cost": "flops", "ratio": ratio})
    contexts = engine.candidates(0, 1e-3)
    engine._select(0, 1e-3, engine.c_step_inputs(0, 1e-3), contexts)
    coupled = contexts[0].candidates
    relative = [p.errors.double() / s for p, s in zip(coupled.parts, coupled.scales)]
    return engine.selection[0], CoupledPricing(task.layer_specs, coupled, FLOPS), relative


@pytest.mark.parametrize("make, x, ratio", [(lambda: _randomize_norms(Block()), torch.randn(1, 2, 5, 5), 0.5),
                                            (lambda: _randomize_norms(flat_cnn()), torch.randn(1, 1, 4, 4), 0.3),
                                            (Concat, torch.randn(1, 1, 4, 4), 0.6)])
def test_minmax_allocation_reaches_the_brute_force_least_largest_relative_error(make, x, ratio):
    torch.manual_seed(0)
    choice, pricing, relative = _minmax_selection(make(), x, ratio)
    combos = list(itertools.product(*(range(len(e)) for e in relative)))
    worst = {c: max(float(e[j]) for e, j in zip(relative, c)) for c in combos}
    fitting = [c for c in combos if pricing.total(c) <= choice.budget]
    best = min(worst[c] for c in fitting)
    assert choice.total_cost == pricing.total(choice.indices) <= choice.budget
    assert worst[tuple(choice.indices)] == best == choice.trade_off
    # the budget that level leaves is spent: the summed error is at most that of each part's cheapest
    # candidate within the level (with FLOPs the cheapest alone is the cheapest whatever the others choose)
    def alone(p, j):
        return pricing.total([j if q == p else d for q, d in enumerate(pricing.dense)])

    cheapest = [min((j for j in range(len(e)) if e[j] <= best), key=lambda j: alone(p, j)) for p, e in enumerate(relative)]
    assert sum(float(e[j]) for e, j in zip(relative, choice.indices)) <= \
        sum(float(e[j]) for e, j in zip(relative, cheapest)) + 1e-12


def test_minmax_allocation_is_the_schemes_option_and_leaves_alpha_selection_alone():
    scheme = get_registry().scheme("channels")
    assert scheme(scheme.Options.from_dict({"allocation": "minmax"})).allocation == "minmax"
    assert scheme.allocation == "sum"  # the class default the conformance kit reads
    assert scheme().allocation == "minmax"  # the option's default: a BatchNorm ResNet's validation split chose it


# ------------------------------------------------------------ output error
class Mlp(nn.Module):
    """x → up → ReLU → down: one group of hidden units, read by ``down``."""

    def __init__(self, d: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)))


def test_output_error_weighs_consumer_columns_by_the_energy_of_their_inputs():
    torch.manual_seed(0)
    model, x = Mlp(), torch.randn(64, 6)
    damping = 0.05
    engine, task = _engine(model, x[:1], options={"multiple": 1, "error": "output", "damping": damping},
                           target={"cost": "flops", "ratio": 0.5})
    engine.calibrate = lambda m: m(x)
    engine.calibrate_metrics()
    hidden = F.relu(model.up(x)).detach().double()
    energy = hidden.pow(2).mean(0)
    energy = energy / energy.max()
    expected = (damping * (model.up.weight.double().pow(2).sum(1) + model.up.bias.double().pow(2))
                + model.down.weight.double().pow(2).sum(0) * (energy + damping))
    norms = engine.candidates(0, 1e-3)[0].candidates.data[0]
    assert torch.allclose(norms, expected, rtol=1e-9)
    # the penalty is measured in the same metric: ‖w − 0‖² in it is the sum of the channels' norms
    assert float(engine._squared_norm(0, task.weight().detach().double())) == pytest.approx(
        float(norms.sum()) + damping * model.down.bias.double().pow(2).sum().item(), rel=1e-9)


def test_output_error_keeps_the_channels_that_carry_the_signal():
    torch.manual_seed(0)
    model, x = Mlp(), torch.randn(256, 6)
    with torch.no_grad():  # units 0-3: large weights that ReLU silences; units 4-7: small weights, always active
        model.up.weight[:4] *= 4
        model.up.bias[:4] = -10.0
        model.up.weight[4:] *= 0.3
        model.up.bias[4:] = 3.0
    removed = {}
    for error in ("weight", "output"):
        options = {"multiple": 4, "error": error, "damping": 1e-3}
        config = {"tasks": [{"layers": ["*"], "scheme": "channels", "options": options,
                             "target": {"cost": "flops", "ratio": 0.6}}], "schedule": {"steps": 0}}
        result = lcpress.compress(copy.deepcopy(model), config, example_input=x[:1], calibration=[x], progress=False)
        kept = result.states[0].meta["groups"][0]["indices"]
        with torch.no_grad():
            removed[error] = float((result.model(x) - model(x)).pow(2).mean())
        assert kept == ([0, 1, 2, 3] if error == "weight" else [4, 5, 6, 7])
    assert removed["output"] < 1e-3 * removed["weight"]


# --------------------------------------------------------- realization, files
def _compressed(model, x, ratio=0.5, cost="flops", **options):
    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "options": {"multiple": 1, **options},
                         "target": {"cost": cost, "ratio": ratio}}], "schedule": {"steps": 0}}
    return lcpress.compress(model, config, example_input=x, progress=False)


@pytest.mark.parametrize("make, x", [(lambda: _randomize_norms(Block()), torch.randn(2, 2, 5, 5)),
                                     (Concat, torch.randn(2, 1, 4, 4)),
                                     (lambda: _randomize_norms(flat_cnn()), torch.randn(2, 1, 4, 4)),
                                     (Attention, torch.randn(2, 3, 8))])
def test_realized_model_is_smaller_equals_delta_and_has_the_priced_parameters(make, x):
    torch.manual_seed(0)
    model = make()
    dense_params = sum(p.numel() for p in model.parameters())
    result = _compressed(model, x)
    assert result.max_abs_error < 1e-5
    layers = dict(result.model.named_modules())
    realized = sum(p.numel() for n in result.tasks[0].layers for p in layers[n].parameters())
    priced = sum(PARAMS.costs(spec, [form])[0].item() for spec, form in
                 ((result.graph.specs[n], f) for n, f in zip(result.tasks[0].layers,
                                                             result.tasks[0].scheme.layer_forms(result.states[0], ()))))
    assert realized == priced
    assert sum(p.numel() for p in result.model.parameters()) < dense_params
    assert not any(isinstance(m, lcpress.nn.ScatterChannels) for m in result.model.modules())
    n = len(result.tasks[0].layers)  # repr counts the weight layers, not the norms rebuilt beside them
    assert f"layers={n} compressed ({n} realized)" in repr(result)


def test_save_load_round_trip_of_a_pruned_model(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 4)
    result = _compressed(_randomize_norms(flat_cnn()), x, ratio=0.4)
    expected = result.model.eval()(x)
    path = lcpress.save(result.model, tmp_path / "m.safetensors")
    for loaded in (lcpress.load(path), lcpress.load(path, model=flat_cnn())):
        torch.testing.assert_close(loaded.eval()(x), expected, rtol=0, atol=1e-6)
        assert loaded.fc1.in_features == result.model.fc1.in_features < 32
    block = _compressed(_randomize_norms(Block()), torch.randn(1, 2, 5, 5), ratio=0.4).model.eval()
    path = lcpress.save(block, tmp_path / "block.safetensors")
    y = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(lcpress.load(path, model=Block()).eval()(y), block(y), rtol=0, atol=1e-6)


def test_ignored_producers_keep_their_outputs_and_say_so():
    torch.manual_seed(0)
    result = _compressed(Attention(), torch.randn(1, 3, 8), ratio=0.3, ignore=["up"])
    meta = result.states[0].meta
    assert "ignored" in next(g["reason"] for g in meta["dense_groups"] if g["producers"] == ["up"])
    assert result.model.up.out_features == 12


def test_an_untraceable_model_stays_dense_with_the_reason(caplog):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            if float(h.sum()) > 0:  # data-dependent control flow: torch.export cannot trace it
                h = h.relu()
            return self.b(h)

    with caplog.at_level(logging.WARNING, logger="lcpress.channels"):
        result = _compressed(Branchy(), torch.randn(1, 4))
    assert "torch.export could not trace Branchy" in caplog.text and "every layer stays dense" in caplog.text
    assert "could not trace" in result.states[0].meta["untraced"]
    assert not any(r.realized for r in result.records)
    assert result.model.a.out_features == 8


class Interrupt(Exception):
    pass


def _train_run(out, stop_at=None, resume=False, error="weight"):
    """Three LC steps of the residual block with a small regression L step; ``stop_at`` interrupts one."""
    torch.manual_seed(0)
    model = _randomize_norms(Block())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 2, 5, 5, generator=g), torch.randn(16, 3, generator=g)

    def train(model, penalty, step):
        if step.index == stop_at:
            raise Interrupt("power cut")
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(3):
            loss = F.mse_loss(model(x), y) + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "options": {"multiple": 2, "error": error},
                         "target": {"cost": "flops", "ratio": 0.5}}],
              "schedule": {"mu0": 0.1, "factor": 2.0, "steps": 3}, "output_dir": str(out)}
    return lcpress.compress(model, config, train, example_input=x[:1], resume=resume, progress=False,
                            calibration=[(x, y)])


@pytest.mark.parametrize("error", ["weight", "output"])
def test_interrupted_run_resumes_exactly_and_exports_to_onnx(tmp_path, error):
    full = _train_run(tmp_path / "full", error=error)
    with pytest.raises(Interrupt):
        _train_run(tmp_path / "cut", stop_at=1, error=error)
    resumed = _train_run(tmp_path / "cut", resume=True, error=error)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.max_abs_error < 1e-5 and full.model.conv1.out_channels < 6
    pytest.importorskip("onnxruntime")
    from lcpress.io.export import missing_packages

    if missing_packages():
        pytest.skip(f"needs {', '.join(missing_packages())}")
    exported = lcpress.export_onnx(resumed.model.eval(), tmp_path / "m.onnx", torch.randn(1, 2, 5, 5))
    assert exported.path.exists() and (exported.max_abs_error is None or exported.max_abs_error < 1e-4)


def test_a_consumer_claimed_by_another_task_is_refused():
    config = {"tasks": [{"layers": ["up"], "scheme": "channels"}, {"layers": ["down"], "scheme": "low_rank"}],
              "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match="layer 'down' is also changed by tasks"):
        lcpress.compress(Attention(), config, example_input=torch.randn(1, 3, 8), progress=False)


def test_an_unreachable_channel_target_is_reported_once_in_ratios(caplog):
    torch.manual_seed(0)
    model = _randomize_norms(Block())
    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "options": {"multiple": 1},
                         "target": {"cost": "flops", "ratio": 0.001}}],
              "schedule": {"mu0": 0.1, "factor": 2.0, "steps": 3}}
    with caplog.at_level(logging.WARNING, logger="lcpress.engine"):
        lcpress.compress(model, config, lambda m, penalty, step: None, example_input=torch.randn(1, 2, 5, 5),
                         progress=False)
    said = [r.getMessage() for r in caplog.records if "out of reach" in r.getMessage()]
    assert len(said) == 1, said  # four C steps, one warning
    assert said[0].startswith("tasks[0].target: flops ≤ 0.1% of dense is out of reach: the cheapest forms")


def test_a_glob_warns_of_the_channels_a_grouped_conv_keeps_but_not_of_the_models_output(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 10))
    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "target": {"ratio": 0.5}}], "schedule": {"steps": 0}}
    with caplog.at_level(logging.WARNING, logger="lcpress.channels"):
        lcpress.compress(model, config, example_input=torch.randn(1, 3, 16, 16), progress=False)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == ["channels: 1 channel group(s) of these layers stay dense: 1× read by the grouped conv 2 (groups=4)"]


class FusedQKV(nn.Module):
    """GPT-2's attention input: one layer's output cut into q, k, v by a size fixed in the code."""

    def __init__(self):
        super().__init__()
        self.inp, self.qkv, self.proj = nn.Linear(16, 32), nn.Linear(32, 96), nn.Linear(32, 8)

    def forward(self, x):
        q, k, v = self.qkv(torch.relu(self.inp(x))).split(32, dim=-1)
        return self.proj(q * k + v)


def test_channels_cut_by_a_fixed_size_split_are_kept_and_the_rest_pruned(caplog):
    torch.manual_seed(0)
    model, x = FusedQKV(), torch.randn(4, 16)
    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "target": {"ratio": 0.6}}], "schedule": {"steps": 0}}
    with caplog.at_level(logging.WARNING, logger="lcpress.channels"):
        result = lcpress.compress(model, config, example_input=x, progress=False)
    assert "cut into parts of fixed size by split.Tensor" in caplog.text
    assert model.qkv.out_features == 96 and model.inp.out_features < 32  # q, k, v whole; the hidden layer pruned
    assert result.max_abs_error < 1e-5 and model(x).shape == (4, 8)


def test_channels_over_a_model_it_cannot_trace_leaves_tables_alone(caplog):
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(20, 8), nn.Linear(8, 4)

        def forward(self, tokens):
            h = self.emb(tokens)
            if h.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                h = h * 2
            return self.fc(h)

    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "target": {"ratio": 0.5}}], "schedule": {"steps": 0}}
    with caplog.at_level(logging.WARNING, logger="lcpress.channels"):
        result = lcpress.compress(Untraceable(), config, example_input=torch.randint(0, 20, (1, 5)), progress=False)
    assert "every layer stays dense" in caplog.text and not any(r.realized for r in result.records)


class _Mlp(nn.Module):
    """a → b → out; subclasses change only how ``forward`` uses them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)


class CalledTwice(_Mlp):
    def forward(self, x):
        return self.out(self.b(torch.relu(self.b(torch.relu(self.a(x))))))


class FixedSlice(_Mlp):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.out(torch.relu(self.b(h))[:, ::2].repeat(1, 2)) + h[:, :4].sum(1, keepdim=True)


class WeightReadElsewhere(_Mlp):
    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.out(h + F.linear(h, self.b.weight.t()))


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class OwnForward(_Mlp):
    def __init__(self) -> None:
        super().__init__()
        self.b = ScaledLinear(32, 32)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


def _reasons(model, x):
    return {g.blocked for g in channel_groups(model, x).groups if g.blocked}


@pytest.mark.parametrize("make, reason", [
    (CalledTwice, "b is called 2 times (shared layer)"),
    (FixedSlice, "picked at fixed positions by slice.Tensor"),
    (WeightReadElsewhere, "the weight of b is also read by t.default"),
    (OwnForward, "read by b: its class ScaledLinear has a forward of its own"),
])
def test_channels_a_pruned_model_could_not_follow_are_kept_with_the_reason(make, reason):
    """Every call of a shared layer, a slice at fixed positions, a weight read outside its layer: the channels
    they touch stay, so the realized model runs and equals Δ(θ) (the first used to price a negative width)."""
    torch.manual_seed(0)
    model, x = make(), torch.randn(3, 16)
    assert any(reason in r for r in _reasons(model, x))
    result = _compressed(model, x, ratio=0.6)
    assert result.max_abs_error < 1e-5 and all(r.realized or r.form["kind"] == "dense" for r in result.records)


def test_a_slice_of_the_whole_channel_axis_or_along_another_axis_blocks_nothing():
    class Sliced(_Mlp):
        def forward(self, x):  # x: (batch, tokens, 16); the slice takes tokens, and all channels
            return self.out(torch.relu(self.b(torch.relu(self.a(x))))[:, 1:, :])

    groups = channel_groups(Sliced(), torch.randn(2, 5, 16)).groups
    assert [g.producers for g in groups if not g.blocked] == [["a"], ["b"]]


def test_convs_with_same_padding_are_followed_as_numeric_padding_is():
    def net(padding):
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=padding), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=padding),
                             nn.ReLU(), nn.Conv2d(8, 2, 3, padding=padding))

    x = torch.randn(1, 1, 6, 6)
    same = [(g.producers, g.consumers) for g in channel_groups(net("same"), x).prunable()]
    assert same == [(g.producers, g.consumers) for g in channel_groups(net(1), x).prunable()] and len(same) == 2
    torch.manual_seed(0)
    assert _compressed(net("same"), x, ratio=0.5).max_abs_error < 1e-5


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_pruned_batch_norm_keeps_the_models_dtype(dtype):
    torch.manual_seed(0)
    model = _randomize_norms(Block()).to(dtype)
    result = _compressed(model, torch.randn(2, 2, 5, 5, dtype=dtype), ratio=0.5)
    assert all(r.realized for r in result.records if r.form["kind"] != "dense")
    assert model.bn1.num_features < 6 and {p.dtype for p in model.parameters()} == {dtype}
    assert model.bn1.running_mean.dtype == dtype


def test_a_layer_used_through_its_weight_and_never_called_is_named_with_the_fix():
    class Functional(_Mlp):
        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.out(torch.relu(F.linear(h, self.b.weight, self.b.bias)))

    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "target": {"ratio": 0.6}}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match=r"reaches layers \['b'\] .*never calls them as modules .*F\.linear"):
        lcpress.compress(Functional(), config, example_input=torch.randn(2, 16), progress=False)


class _AuxHead(nn.Module):
    """An auxiliary head used only in training (GoogLeNet style): eval-mode tracing never sees what it reads."""

    def __init__(self):
        super().__init__()
        self.a, self.main, self.aux = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return (self.main(h), self.aux(h)) if self.training else self.main(h)


def test_a_layer_the_traced_forward_never_reads_is_named_before_channels_prunes(caplog):
    from lcpress.core.channels import channel_groups as groups

    torch.manual_seed(0)
    model, x = _AuxHead(), torch.randn(4, 8)
    assert groups(model, x).unused == ["aux"]
    config = {"tasks": [{"layers": ["*"], "scheme": "channels", "target": {"cost": "params", "ratio": 0.5}}],
              "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(model, config, example_input=x, progress=False)
    assert "channels: layers aux hold weights the forward pass on the example input never reads" in caplog.text

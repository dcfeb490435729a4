"""Quantization: optimal codebooks, exact storage, realized layers that match Δ(θ)."""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import torch
from torch import nn

import lcpress
from lcpress import CStepContext
from lcpress.nn.codecs import DecodedConv2d, DecodedLinear
from lcpress.plugins.quantize import QuantizeOptions, QuantizeScheme, Quantized, binary, ternary
from lcpress.core.registry import get_registry

STORAGE = get_registry().cost_model("storage")()


def _scheme(**options) -> QuantizeScheme:
    return QuantizeScheme(QuantizeOptions.from_dict(options))


def _error(w, codebook, codes):
    return float(((w.double() - codebook.double()[codes]) ** 2).sum())


def test_binary_scale_is_optimal():
    w = torch.randn(200, generator=torch.Generator().manual_seed(0))
    codebook, codes = binary(w)
    best = _error(w, codebook, codes)
    for a in torch.linspace(0.01, 2, 400):
        assert best <= float(((w - torch.where(w >= 0, a, -a)) ** 2).sum()) + 1e-6


@pytest.mark.parametrize("seed", range(6))
def test_ternary_equals_brute_force(seed):
    w = torch.randn(6, generator=torch.Generator().manual_seed(seed))
    codebook, codes = ternary(w)
    found = _error(w, codebook, codes)
    best = float("inf")
    for signs in itertools.product((-1, 0, 1), repeat=6):
        s = torch.tensor(signs, dtype=torch.float64)
        if not s.abs().sum():
            continue
        a = max(float((s * w.double()).sum() / s.abs().sum()), 0.0)  # optimal scale for this pattern
        best = min(best, float(((w.double() - a * s) ** 2).sum()))
    assert found == pytest.approx(best, abs=1e-9)


def test_adaptive_c_step_is_the_kmeans_optimum_and_decompresses_to_the_codebook():
    w = torch.randn(30, 20)
    scheme = _scheme(k=4)
    state = scheme.compress(w, CStepContext(mu=1.0))
    delta = scheme.decompress(state)
    assert delta.shape == w.shape and torch.unique(delta).numel() <= 4
    from lcpress.linalg.kmeans import optimal_kmeans

    assert float(((w - delta) ** 2).sum()) == pytest.approx(float(optimal_kmeans(w, 4).errors[3]), rel=1e-6)


def test_lloyd_solver_warm_starts_from_the_previous_codebook():
    w = torch.randn(40, 40)
    scheme = _scheme(k=8, solver="lloyd", iterations=50)
    first = scheme.compress(w, CStepContext(mu=1.0))
    moved = w + 0.01 * torch.randn_like(w)
    warm = scheme.compress(moved, CStepContext(mu=1.0, previous=first))
    # warm start: the new codebook stays close to the previous one
    assert torch.allclose(warm.tensors["codebook"], first.tensors["codebook"], atol=0.05)
    start_error = float(((moved - first.tensors["codebook"][first.tensors["codes"].long()]) ** 2).sum())
    assert float(((moved - scheme.decompress(warm)) ** 2).sum()) <= start_error


@pytest.mark.parametrize("layer", [nn.Linear(40, 24), nn.Conv2d(6, 10, 3, padding=1, padding_mode="circular")],
                         ids=["linear", "conv"])
@pytest.mark.parametrize("options", [{"k": 2}, {"k": 5}, {"codebook": "ternary"}, {"codebook": "binary"}])
def test_realized_layer_equals_delta_and_stores_what_the_cost_model_counts(layer, options, tmp_path):
    is_conv = isinstance(layer, nn.Conv2d)
    model = nn.Sequential(copy.deepcopy(layer), nn.Flatten())
    x = torch.randn(3, 6, 9, 9) if is_conv else torch.randn(3, 40)
    config = {"tasks": [{"layers": ["0"], "scheme": "quantize", "options": options, "cost": "storage"}],
              "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    realized = model[0]
    assert isinstance(realized, DecodedConv2d if is_conv else DecodedLinear)
    assert result.max_abs_error <= 1e-6
    assert torch.equal(realized.weight, result.tasks[0].scheme.decompress(result.states[0]))  # read as before
    spec = result.graph.specs["0"]
    form = result.tasks[0].scheme.form(result.states[0])
    counted = STORAGE.cost(spec, form)
    assert counted <= realized.storage_bits() < counted + 8  # packed bytes round up the index bits
    # the file holds packed indices, not floats: save → load gives the same outputs
    path = lcpress.save(model, tmp_path / "q.safetensors")
    loaded = lcpress.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert os.path.getsize(path) < (spec.params * 4) / 3 + 4096


def test_a_quantized_model_traces_with_torch_jit_and_the_trace_keeps_the_packed_weights(tmp_path, recwarn):
    """jit.trace checks that two traced calls record one graph; the decode cache must not make them differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 512), nn.ReLU(),
                          nn.Linear(512, 5))
    x = torch.randn(2, 3, 6, 6)
    config = {"tasks": [{"layers": ["*"], "scheme": "quantize", "options": {"k": 4}}], "schedule": {"steps": 0}}
    lcpress.compress(model, config, example_input=x, progress=False)
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), x)  # raises TracingCheckError when the graphs differ
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    assert not [w for w in recwarn if issubclass(w.category, torch.jit.TracerWarning)]
    torch.jit.save(traced, tmp_path / "traced.pt")
    float_bytes = 4 * sum(p.numel() for p in nn.Linear(128, 512).parameters())
    assert os.path.getsize(tmp_path / "traced.pt") < float_bytes / 4  # 2-bit codes, not float weights


def test_codebook_size_is_chosen_under_a_storage_budget():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight.mul_(0.01)  # small weights: cheap to quantize coarsely
    x = torch.randn(2, 64)
    config = {"tasks": [{"layers": ["*"], "scheme": "quantize", "options": {"k": None, "k_choices": [2, 4, 16]},
                         "target": {"cost": "storage", "ratio": 0.1}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    t = result.totals
    assert t["storage_after"] <= 0.1 * t["storage_before"]
    ks = list(result.layers["form_k"])
    assert all(k in (2, 4, 16) for k in ks)


def test_shared_codebook_over_several_layers():
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    x = torch.randn(2, 16)
    config = {"tasks": [{"layers": ["*"], "scheme": "quantize", "options": {"k": 2}, "shared": True}],
              "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    assert all(isinstance(model[i], lcpress.nn.DecodedLinear) for i in (0, 2))  # realized and saved small, each
    values = torch.cat([model[0].weight_now().reshape(-1), model[2].weight_now().reshape(-1)])
    assert torch.unique(values).numel() == 2  # one codebook serves both layers
    assert list(result.layers["form"]) == ["codebook 2 (1 bit)"] * 2
    assert result.totals["storage_after"] < 0.15 * result.totals["storage_before"]  # 1 bit a weight, float biases


def test_quantized_form_storage():
    spec = lcpress.LayerSpec("linear", 300, 100, (1, 300))
    assert Quantized(2).storage_bits(spec) == 300 * 100 * 1 + (2 + 100) * 32
    assert Quantized(5).storage_bits(spec) == 300 * 100 * 3 + (5 + 100) * 32
    assert Quantized(3).storage_bits(spec, dtype_bits=16) == 300 * 100 * 2 + (3 + 100) * 16
    assert Quantized(4).param_count(spec) == spec.params + 4


@pytest.mark.parametrize("options, message", [
    ({"k": 1}, "k: must be at least 2, got 1"),
    ({"k": None, "k_choices": []}, "k_choices"),
    ({"codebook": "binary", "k": None}, "fixed size"),
    ({"solver": "kmeans"}, "solver"),
])
def test_bad_options_name_the_key(options, message):
    with pytest.raises(lcpress.ConfigError, match=message):
        lcpress.load_config({"tasks": [{"layers": ["*"], "scheme": "quantize", "options": options}]})


def test_a_compiled_quantized_model_compiles_once_not_once_per_layer():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(10)]  # more layers than dynamo's limit
    model = nn.Sequential(*blocks, nn.Linear(16, 4))
    x = torch.randn(2, 16)
    lcpress.compress(model, {"tasks": [{"layers": ["*"], "scheme": "quantize", "options": {"k": 4}}],
                             "schedule": {"steps": 0}}, example_input=x, progress=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("scheme, cost", [("quantize", None), ("prune", None), ("quantize", "params")])
def test_alpha_under_a_cost_no_form_lowers_is_refused_before_training(scheme, cost):
    """Quantized and sparse layers run as dense products: under flops nothing is cheaper, and α could pick nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    task = {"layers": ["*"], "scheme": scheme, "options": {"k": None} if scheme == "quantize" else {}, "alpha": 1e-3}
    if cost:
        task["cost"] = cost
    trained = []

    def train_fn(model, penalty, step):
        trained.append(step.index)

    with pytest.raises(lcpress.ConfigError, match=rf"under cost '{cost or 'flops'}' no form {scheme} offers costs "
                                                  r"less than dense.*cost: storage"):
        lcpress.compress(model, {"tasks": [task], "schedule": {"steps": 2, "mu0": 1e-2}}, train_fn,
                         example_input=torch.randn(1, 16), progress=False)
    assert trained == []


def test_fine_tuning_a_quantized_layer_says_its_stored_values_stay(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config = {"tasks": [{"layers": ["0"], "scheme": "quantize", "options": {"k": 4}}],
              "schedule": {"steps": 0}, "finetune": {"steps": 1}}
    seen = []

    def train_fn(model, penalty, step):
        seen.append(sorted(n for n, p in model.named_parameters() if p.requires_grad))

    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(model, config, train_fn, example_input=torch.randn(1, 16), progress=False)
    assert "1 layer(s) stored quantized or sparse ('0') keep their stored values and train their bias only" in caplog.text
    assert "0.bias" in seen[-1] and not any(n.startswith("0.codecs") for n in seen[-1])


def test_compressing_a_quantized_model_again_says_its_layers_are_stored_compressed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(1, 16)
    quantize = {"scheme": "quantize", "options": {"k": 4}}
    lcpress.compress(model, {"tasks": [{"layers": ["*"], **quantize}], "schedule": {"steps": 0}}, example_input=x,
                     progress=False)
    again = {"tasks": [{"layers": ["*"], **quantize}], "schedule": {"steps": 0}}
    with pytest.raises(lcpress.ConfigError, match=r"stored compressed already \(DecodedLinear\); compress the original"):
        lcpress.compress(model, again, example_input=x, progress=False)
    again["tasks"][0]["layers"] = ["0"]
    with pytest.raises(lcpress.ConfigError, match=r"'0' was realized by an lcpress run .*stored compressed, with no"):
        lcpress.compress(model, again, example_input=x, progress=False)


def test_a_fixed_codebook_refuses_a_k_it_would_ignore():
    model = nn.Sequential(nn.Linear(16, 16))
    config = {"tasks": [{"layers": ["0"], "scheme": "quantize", "options": {"codebook": "binary", "k": 8}}]}
    with pytest.raises(lcpress.ConfigError, match=r"options\.k: a binary codebook has 2 entries, so k: 8 would be"):
        lcpress.compress(model, config, example_input=torch.randn(1, 16), progress=False)


@pytest.mark.parametrize("task, said", [
    ({"scheme": "quantize"}, r"to let it choose, set k: null"),  # the default k: 2 fixes the form
    ({"scheme": "additive", "options": {"parts": [{"scheme": "low_rank", "options": {"rank": 2}},
                                                  {"scheme": "prune", "options": {"keep": 8}}]}},
     r"it never chooses \(its parts' forms are fixed\): drop the target"),
])
def test_a_target_on_a_form_the_options_fix_says_how_to_let_the_scheme_choose(task, said):
    model = nn.Sequential(nn.Linear(16, 16))
    config = {"tasks": [{"layers": ["0"], "target": {"cost": "storage", "ratio": 0.5}, **task}]}
    with pytest.raises(lcpress.ConfigError, match=rf"does not choose a form, so a budget cannot steer it; {said}"):
        lcpress.compress(model, config, example_input=torch.randn(1, 16), progress=False)


def test_a_preview_shows_the_layers_realization_will_keep_dense_as_the_run_does():
    """A 256-entry codebook over a 40-weight layer stores more than the layer: the run keeps it dense, and so
    does the preview's table (it priced the codebook)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))  # layer 2: 256 weights
    config = {"tasks": [{"layers": ["*"], "scheme": "quantize", "options": {"k": 256}, "cost": "storage"}],
              "schedule": {"steps": 0}}
    x = torch.randn(1, 64)
    preview = lcpress.predict_costs(copy.deepcopy(model), config, x, progress=False).table.set_index("layer")
    run = lcpress.compress(model, config, example_input=x, progress=False).layers.set_index("layer")
    assert preview.loc["2", "form"].endswith("→ kept dense") and run.loc["2", "form"].endswith("→ kept dense")
    assert preview["storage_after"].sum() == run["storage_after"].sum()

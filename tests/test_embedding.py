"""Embedding tables: priced, compressed, realized, saved and exported like Linear and Conv2d layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lcpress
from lcpress.core.forms import Dense, LayerSpec, LowRank
from lcpress.core.registry import get_registry
from lcpress.io.export import missing_packages
from lcpress.nn.codecs import DecodedEmbedding

VOCAB, WIDTH = 300, 48


class TextNet(nn.Module):
    """A token classifier: an embedding table (row 0 for padding), a Linear layer, a mean over positions."""

    def __init__(self, **embedding):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH, padding_idx=0, **embedding)
        self.fc = nn.Linear(WIDTH, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.emb(x))).mean(1)


def _tokens(batch=6, length=9):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))


def _compress(task: dict, model: nn.Module | None = None, steps: int = 0):
    torch.manual_seed(0)
    model = model or TextNet()
    x = _tokens()
    config = {"tasks": [{"layers": ["emb"], **task}], "schedule": {"steps": steps, "mu0": 1e-2}}

    def train_fn(model, penalty, step):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss = model(x).square().mean() + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()

    result = lcpress.compress(model, config, train_fn if steps else None, example_input=x, progress=False)
    return model, result, x


def _dense_delta(result, x):
    """TextNet holding Δ(θ) in its table: what the realized model must compute."""
    reference = TextNet()
    reference.load_state_dict({k: v for k, v in _fresh_state().items()})
    with torch.no_grad():
        reference.emb.weight.copy_(result.tasks[0].scheme.decompress(result.states[0]))
        reference.fc.load_state_dict(result.model.fc.state_dict())
    return reference(x)


def _fresh_state():
    torch.manual_seed(0)
    return TextNet().state_dict()


def test_an_embedding_spec_is_a_table_its_lookup_multiplies_nothing():
    spec = LayerSpec("embedding", VOCAB, WIDTH, (6, 9), bias=False)
    assert spec.weight_shape == (VOCAB, WIDTH) and spec.output_shape == (6, 9, WIDTH)
    assert spec.params == VOCAB * WIDTH and spec.flops == 0
    table, widen = LowRank(8).primitives(spec)
    assert (table.kind, table.weight_shape, widen.kind, widen.weight_shape) == ("embedding", (VOCAB, 8), "linear",
                                                                                 (WIDTH, 8))
    assert LowRank(8).param_count(spec) == 8 * (VOCAB + WIDTH)
    assert widen.flops == 2 * 6 * 9 * 8 * WIDTH  # the thin table costs a matmul its dense lookup does not


@pytest.mark.parametrize("rank", [1, 8, 24])
def test_a_low_rank_table_is_a_thin_table_then_a_linear_and_computes_delta(rank):
    model, result, x = _compress({"options": {"rank": rank, "rank_multiple": 1}, "cost": "params"})
    table, widen = model.emb
    assert isinstance(table, nn.Embedding) and table.weight.shape == (VOCAB, rank) and table.padding_idx == 0
    assert isinstance(widen, nn.Linear) and widen.bias is None and widen.weight.shape == (WIDTH, rank)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _dense_delta(result, x), rtol=0, atol=1e-5)
    assert result.layers.set_index("layer").loc["emb", "params_after"] == rank * (VOCAB + WIDTH)


def test_the_low_rank_error_falls_as_the_rank_rises():
    errors = []
    for rank in (2, 8, 32):
        _, result, _ = _compress({"options": {"rank": rank, "rank_multiple": 1}, "cost": "params"})
        weight = _fresh_state()["emb.weight"]
        errors.append(float((weight - result.tasks[0].scheme.decompress(result.states[0])).norm()))
    assert errors[0] > errors[1] > errors[2]


def test_under_flops_a_low_rank_table_costs_more_than_its_lookup_and_stays_dense():
    model, result, _ = _compress({"options": {"rank": 8}})  # cost: flops, the default
    assert isinstance(model.emb, nn.Embedding) and not result.records[0].realized
    assert "costs more than dense" in result.records[0].reason


def test_a_params_budget_realizes_the_thin_table_the_budget_chose_though_the_task_prices_flops():
    model, result, _ = _compress({"target": {"cost": "params", "ratio": 0.3}})  # cost: flops, the default
    assert result.records[0].realized and isinstance(model.emb, nn.Sequential)
    assert sum(p.numel() for p in model.emb.parameters()) <= 0.3 * VOCAB * WIDTH


@pytest.mark.parametrize("task, stored_bits", [
    ({"scheme": "quantize", "options": {"k": 4}}, VOCAB * WIDTH * 2 + 4 * 32),
    ({"scheme": "prune", "options": {"keep": 700}}, None),
])
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*is deprecated:DeprecationWarning")
def test_a_quantized_or_pruned_table_is_stored_small_and_computes_delta(task, stored_bits, tmp_path):
    model, result, x = _compress(task, steps=2)
    assert isinstance(model.emb, DecodedEmbedding) and model.emb.padding_idx == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), _dense_delta(result, x), rtol=0, atol=1e-6)
    if stored_bits is not None:
        assert model.emb.storage_bits() == stored_bits
    path = lcpress.save(model, tmp_path / "m.safetensors")
    assert path.stat().st_size < VOCAB * WIDTH * 4 / 2
    loaded = lcpress.load(path, model=TextNet())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_a_half_precision_table_stays_in_its_dtype():
    model = TextNet().to(torch.bfloat16)
    model, _, x = _compress({"scheme": "quantize", "options": {"k": 4}}, model=model)
    assert model.emb(x).dtype == torch.bfloat16


@pytest.mark.parametrize("task, why", [
    ({"scheme": "alds", "target": {"ratio": 0.5}}, "alds compresses Linear and Conv2d layers, not Embedding layers"),
    ({"scheme": "prune", "options": {"keep_fraction": 0.5, "structured": True}}, "remove whole tokens"),
    ({"scheme": "low_rank", "options": {"error": "output"}, "target": {"ratio": 0.5}}, "an embedding's input is an index"),
])
def test_what_a_scheme_cannot_do_to_a_table_is_refused_by_name_and_left_alone_by_a_glob(task, why, caplog):
    with pytest.raises(lcpress.ConfigError, match=f"layer 'emb': .*{why}"):
        _compress(task)
    torch.manual_seed(0)
    model = TextNet()
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(model, {"tasks": [{**task, "layers": ["*"]}], "schedule": {"steps": 0}},
                         example_input=_tokens(), calibration=[_tokens()], progress=False)
    assert isinstance(model.emb, nn.Embedding) and why in caplog.text


@pytest.mark.parametrize("embedding, why", [({"max_norm": 1.0}, "max_norm"), ({"sparse": True}, "sparse=True")])
def test_tables_that_change_themselves_or_train_sparsely_are_refused(embedding, why):
    with pytest.raises(lcpress.ConfigError, match=f"layer 'emb': an embedding with {why}"):
        _compress({"scheme": "quantize"}, model=TextNet(**embedding))


def test_cpu_latency_times_a_table_on_indices(monkeypatch, tmp_path):
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path))
    timer = get_registry().cost_model("cpu_latency")
    model = timer(timer.Options(min_run_time=0.01, threads=1))
    costs = model.costs(LayerSpec("embedding", VOCAB, WIDTH, (4, 16), bias=False), [Dense(), LowRank(8)])
    assert all(math.isfinite(c) and c > 0 for c in costs.tolist())


@pytest.mark.skipif(bool(missing_packages()), reason="ONNX export needs the [onnx] extra")
@pytest.mark.parametrize("task", [{"scheme": "quantize", "options": {"k": 4}},
                                  {"options": {"rank": 8}, "cost": "params"}])
def test_compressed_tables_run_in_onnxruntime(task, tmp_path):
    model, _, x = _compress(task)
    done = lcpress.export_onnx(copy.deepcopy(model), tmp_path / "m.onnx", x[:1])
    assert done.max_abs_error < 1e-4


def test_a_glob_leaves_a_frozen_table_alone_when_the_run_trains(caplog):
    """A fine-tuned model often freezes its tables: '*' compresses the rest, as it did before tables compressed."""
    torch.manual_seed(0)
    model = TextNet()
    model.emb.requires_grad_(False)
    x = _tokens()

    def train_fn(model, penalty, step):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        loss = model(x).square().mean() + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()

    config = {"tasks": [{"layers": ["*"], "scheme": "quantize"}], "schedule": {"steps": 1, "mu0": 1e-2}}
    with caplog.at_level("WARNING", logger="lcpress"):
        result = lcpress.compress(model, config, train_fn, example_input=x, progress=False)
    assert [r.name for r in result.records] == ["fc"] and isinstance(model.emb, nn.Embedding)
    assert "'emb' (its weight is frozen (requires_grad=False)" in caplog.text
    with pytest.raises(lcpress.ConfigError, match=r"emb\.weight is frozen.*requires_grad_\(True\)"):
        lcpress.compress(TextNet().requires_grad_(False), {**config, "tasks": [{"layers": ["emb"], "scheme": "quantize"}]},
                         train_fn, example_input=x, progress=False)

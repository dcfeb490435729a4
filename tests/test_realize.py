"""Realization: the realized model equals the dense model holding Δ(θ), and is smaller."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lcpress
from lcpress.core.registry import get_registry

PARAMS = get_registry().cost_model("params")()


def _compress(model, layers, x, **options):
    config = {"tasks": [{"layers": layers, "options": options}], "schedule": {"steps": 0}}
    return lcpress.compress(model, config, example_input=x)


def _dense_reference(result, model_before):
    """The original architecture with Δ(θ) loaded — what the realized model must compute."""
    ref = model_before
    with torch.no_grad():
        for task, state in zip(result.tasks, result.states):
            for name, value in zip(task.layers, task.view.scatter(task.scheme.decompress(state))):
                ref.get_submodule(name).weight.copy_(value)
    return ref.eval()


CONVS = [
    nn.Conv2d(8, 16, 3),
    nn.Conv2d(8, 16, 3, stride=2, padding=1),
    nn.Conv2d(8, 16, (3, 5), stride=(2, 1), padding=(2, 1), dilation=(2, 3)),
    nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect", bias=False),
    nn.Conv2d(8, 16, (5, 3), stride=2, padding=(1, 2), padding_mode="circular"),
    nn.Conv2d(8, 16, (3, 4), padding="same", dilation=(1, 2), padding_mode="replicate"),
    nn.Conv2d(8, 16, 3, padding="valid"),
]


@pytest.mark.parametrize("conv", CONVS, ids=["plain", "stride-pad", "dilated", "reflect", "circular", "same", "valid"])
@pytest.mark.parametrize("shape", ["channel", "spatial", "input"])
def test_realized_conv_equals_dense_delta(conv, shape):
    import copy

    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten())
    before = copy.deepcopy(model)
    x = torch.randn(2, 8, 13, 11)
    result = _compress(model, ["0"], x, rank=3, shape=shape)
    ref = _dense_reference(result, before)
    realized = model[0]  # every padding (mode) splits exactly: a kh×1 stage acts on each column alone
    assert isinstance(realized, nn.Sequential) and realized[0].out_channels == 3
    stages = [type(m).__name__ for m in realized]
    assert stages == {"channel": ["Conv2d", "PointwiseConv2d"], "spatial": ["Conv2d", "Conv2d"],
                      "input": ["PointwiseConv2d", "Conv2d"]}[shape]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", ["channel", "spatial", "input"])
def test_realized_stages_are_the_forms_primitives_and_what_measured_models_time(shape):
    """Every stage of a realized low-rank conv has the shape its form's primitive prices, and the measured cost
    models time the same module kinds (a plain 1×1 stage is a PointwiseConv2d in both)."""
    from lcpress.core.measured import form_module

    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten())
    x = torch.randn(2, 8, 13, 11)
    result = _compress(model, ["0"], x, rank=5, shape=shape)
    spec, form = result.graph.specs["0"], result.tasks[0].scheme.form(result.states[0])
    assert form.shape == shape
    realized, timed = list(model[0]), list(form_module(spec, form))
    assert [type(m) for m in realized] == [type(m) for m in timed]
    for stage, primitive, clone in zip(realized, form.primitives(spec), timed):
        assert stage.weight.shape == clone.weight.shape == primitive.weight_shape
    assert sum(p.numel() for p in model[0].parameters()) == PARAMS.cost(spec, form)


def test_realized_linear_equals_dense_delta_and_params_match_cost_model():
    import copy

    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 3))
    before = copy.deepcopy(model)
    x = torch.randn(5, 64)
    result = _compress(model, ["0", "2"], x, rank=8)
    ref = _dense_reference(result, before)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    for name in ("0", "2"):
        spec = result.graph.specs[name]
        form = result.tasks[[t.name for t in result.tasks].index(name)].scheme.form(
            result.states[[t.name for t in result.tasks].index(name)])
        realized_params = sum(p.numel() for p in model.get_submodule(name).parameters())
        assert realized_params == PARAMS.cost(spec, form)
    total = sum(p.numel() for p in model.parameters())
    assert total == result.totals["params_after"]


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Sequential(nn.Linear(32, 32), nn.Tanh()), nn.Linear(32, 32))
        self.head = nn.ModuleDict({"out": nn.Linear(32, 4)})

    def forward(self, x):
        return self.head["out"](self.encoder(x))


def test_nested_modules_keep_their_names():
    model = Nested()
    x = torch.randn(3, 32)
    _compress(model, ["encoder.*"], x, rank=8)
    assert isinstance(model.encoder[0][0], nn.Sequential)
    assert isinstance(model.encoder[1], nn.Sequential)
    assert "encoder.0.0.0.weight" in model.state_dict()


class SharedTwice(nn.Module):
    """One Linear registered under two names and called twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = self.a
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


def test_shared_layer_is_realized_under_every_name():
    import copy

    model = SharedTwice()
    before = copy.deepcopy(model)
    x = torch.randn(4, 32)
    result = _compress(model, ["*"], x, rank=8)
    assert model.a is model.b and isinstance(model.a, nn.Sequential)
    assert result.graph.specs["a"].calls == 2
    assert [r.name for r in result.records] == ["a", "out"]  # the alias is one task, not two
    ref = _dense_reference(result, before)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)



class TiedWeights(nn.Module):
    """Two distinct layers holding one weight tensor, as a language model's head and embedding do."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.b.weight = self.a.weight
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("layers", [["a"], ["b"], ["[ab]"]])
def test_a_tied_weight_is_refused_naming_its_other_holder_and_nothing_changes(layers):
    """Named exactly, or the only layers a glob reaches, a tied layer stops the run before training."""
    model = TiedWeights()
    weight = model.a.weight.detach().clone()
    with pytest.raises(lcpress.ConfigError, match=r"shares its weight with (a|b)\.weight.*untie"):
        _compress(model, layers, torch.randn(4, 32), rank=8)
    assert model.a.weight is model.b.weight and torch.equal(model.a.weight, weight)
    assert isinstance(model.a, nn.Linear) and isinstance(model.b, nn.Linear)


def test_a_glob_leaves_tied_layers_alone_with_a_warning_and_compresses_the_rest(caplog):
    model = TiedWeights()
    with caplog.at_level(logging.WARNING, logger="lcpress"):
        result = _compress(model, ["*"], torch.randn(4, 32), rank=1)
    assert [r.name for r in result.records] == ["out"]
    assert model.a.weight is model.b.weight and isinstance(model.a, nn.Linear) and isinstance(model.b, nn.Linear)
    assert "'a' (tied to b.weight)" in caplog.text and "'b' (tied to a.weight)" in caplog.text


def test_a_tied_weight_is_counted_once_in_params_and_storage_and_runs_twice_in_flops():
    """The per-layer table and totals count what the model stores: its real parameter count, before and after."""
    model = TiedWeights()
    stored_before = sum(p.numel() for p in model.parameters())  # named_parameters counts a shared tensor once
    result = _compress(model, ["*"], torch.randn(4, 32), rank=1)
    assert result.graph.specs["b"].tied and not result.graph.specs["a"].tied
    assert result.totals["params_before"] == stored_before
    assert result.totals["params_after"] == sum(p.numel() for p in model.parameters())
    assert result.totals["storage_before"] == 32 * stored_before
    row = result.layers.set_index("layer").loc["b"]
    assert row["params_before"] == 32 and row["form"] == "dense (weight tied)"  # its bias alone
    assert row["flops_before"] == row["flops_after"] == result.layers.set_index("layer").loc["a", "flops_before"]


def test_untied_as_the_error_says_the_layer_compresses():
    model = TiedWeights()
    model.a.weight = nn.Parameter(model.a.weight.detach().clone())
    result = _compress(model, ["a"], torch.randn(4, 32), rank=8)
    assert isinstance(model.a, nn.Sequential) and isinstance(model.b, nn.Linear)
    assert result.max_abs_error <= 1e-5

def test_form_costlier_than_dense_stays_dense():
    model = nn.Sequential(nn.Linear(16, 16))
    w = model[0].weight.detach().clone()
    result = _compress(model, ["0"], torch.randn(1, 16), rank=12)  # 12·32 > 16·16
    assert isinstance(model[0], nn.Linear)
    assert not result.records[0].realized and "costs more than dense" in result.records[0].reason
    assert torch.linalg.matrix_rank(model[0].weight.detach()) == 12  # it holds Δ(θ), not w
    assert not torch.equal(model[0].weight.detach(), w)


def test_replace_module_refuses_unknown_names():
    from lcpress.core.surgery import replace_module

    with pytest.raises(lcpress.LcpressError, match="no submodule 'missing'"):
        replace_module(nn.Sequential(nn.Linear(2, 2)), "missing", nn.Identity())


def _torch_encoder():
    torch.manual_seed(0)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 1,
                                 enable_nested_tensor=False).eval()


def test_layers_inside_a_fused_torch_transformer_are_refused_before_training(caplog):
    """TransformerEncoderLayer's fast path reads linear1/linear2's weights itself: no realized form could run
    there, which is known when the run is planned, not after its L steps."""
    from lcpress import ConfigError

    x = torch.randn(2, 5, 32)
    with pytest.raises(ConfigError, match=r"layer 'layers.0.linear1': its parent TransformerEncoderLayer reads its "
                                          r"weight inside its own forward"):
        _compress(_torch_encoder(), ["layers.0.linear1", "layers.0.linear2"], x, rank=8)
    with pytest.raises(ConfigError, match=r"can compress none of the layers matched: 'layers.0.linear1' \(its parent "
                                          r"TransformerEncoderLayer"):
        _compress(_torch_encoder(), ["*"], x, rank=8)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_glob_leaves_attention_out_proj_alone_with_a_warning(caplog):
    """MultiheadAttention never calls out_proj: '*' skips it (saying so); the called Linear is compressed."""
    torch.manual_seed(0)
    model, x = _Attention().eval(), torch.randn(2, 5, 32)
    with caplog.at_level("WARNING", logger="lcpress"):
        result = _compress(model, ["*"], x, rank=2)
    assert [r.name for r in result.records] == ["head"] and result.records[0].realized
    skipped = [r.message for r in caplog.records if "also matches" in r.message]
    assert len(skipped) == 1 and "'attn.out_proj'" in skipped[0] and "MultiheadAttention" in skipped[0]


def test_naming_attention_out_proj_is_refused_with_the_reason():
    with pytest.raises(lcpress.ConfigError, match=r"out_proj' is not called .*MultiheadAttention reads"):
        _compress(_torch_encoder(), ["layers.0.self_attn.out_proj"], torch.randn(2, 5, 32), rank=8)
    with pytest.raises(lcpress.ConfigError, match=r"no layer it matches is called .*MultiheadAttention"):
        _compress(_torch_encoder(), ["*out_proj"], torch.randn(2, 5, 32), rank=8)


def test_exclude_applies_before_a_match_is_checked(caplog):
    """An excluded layer the forward never calls is neither an error nor a warning."""
    with caplog.at_level("WARNING", logger="lcpress"):
        config = {"tasks": [{"layers": ["*"], "exclude": ["*out_proj"], "options": {"rank": 2}}],
                  "schedule": {"steps": 0}}
        result = lcpress.compress(_Attention().eval(), config, example_input=torch.randn(2, 5, 32))
    assert len(result.records) == 1 and not [r for r in caplog.records if "also matches" in r.message]


@pytest.mark.parametrize("task", [
    {"layers": ["*"], "options": {"rank": 4, "rank_multiple": 1, "shape": "channel"}},
    {"layers": ["*"], "options": {"rank": 4, "rank_multiple": 1, "shape": "input"}},
    {"layers": ["*"], "scheme": "alds", "target": {"cost": "flops", "ratio": 0.5}},
    {"layers": ["*"], "scheme": "channels", "target": {"cost": "flops", "ratio": 0.5}},
    {"layers": ["5", "7"], "scheme": "additive", "options": {"parts": [
        {"scheme": "low_rank", "options": {"rank": 4, "rank_multiple": 1}},
        {"scheme": "low_rank", "options": {"rank": 2, "rank_multiple": 1}, "reshape": 4}]}},
], ids=["low_rank-channel", "low_rank-input", "alds", "channels", "additive-reshaped"])
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated:DeprecationWarning")
def test_realized_structures_compile_with_torch_jit_script(task):
    """TorchScript users (mobile) script the realized model; its thin modules must compile and compute the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 36, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(8, 3, 6, 6)  # more images than PointwiseConv2d.CONV_UP_TO: its GEMM path too
    lcpress.compress(model, {"tasks": [task], "schedule": {"steps": 0}}, example_input=x[:1], progress=False)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for batch in (x[:1], x):
            torch.testing.assert_close(scripted(batch), model(batch), rtol=1e-5, atol=1e-6)


def test_a_glob_says_which_weight_layers_it_reaches_but_does_not_compress(caplog):
    """'*' over a 1-D CNN compresses the Linear head; the Conv1d layers it leaves dense are named, not silent."""
    model = nn.Sequential(nn.Conv1d(4, 16, 3), nn.ReLU(), nn.Conv1d(16, 16, 3), nn.Flatten(), nn.Linear(96, 10))
    x = torch.randn(1, 4, 10)
    with caplog.at_level("WARNING", logger="lcpress"):
        result = _compress(model, ["*"], x, rank=4)
    assert [r.name for r in result.records] == ["4"]
    assert [r.message for r in caplog.records if "does not compress" in r.message] == [
        "tasks[0].layers[0]: '*' also reaches 2 Conv1d, which lcpress does not compress (it compresses nn.Linear, "
        "nn.Conv2d and nn.Embedding); they stay as they are (exclude them to silence this)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(model, {"tasks": [{"layers": ["*"], "exclude": ["0", "2"], "options": {"rank": 4}}],
                                 "schedule": {"steps": 0}}, example_input=x)
    assert not [r for r in caplog.records if "does not compress" in r.message]


class _Recurrent(nn.Module):
    """A text classifier: embedding, LSTM, GRU, a Linear head, and a learned start token in a module of its own."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(50, 8), nn.Linear(16, 3)
        self.lstm, self.gru = nn.LSTM(8, 16, batch_first=True), nn.GRU(16, 16, batch_first=True)
        self.start = nn.ParameterList([torch.zeros(1, 1, 8)])

    def forward(self, x):
        h = torch.cat([self.start[0].expand(len(x), 1, 8), self.emb(x)], 1)
        return self.fc(self.gru(self.lstm(h)[0])[0][:, -1])


def test_a_glob_names_recurrent_layers_it_leaves_dense_and_not_a_learned_token(caplog):
    with caplog.at_level("WARNING", logger="lcpress"):
        result = _compress(_Recurrent(), ["*"], torch.randint(0, 50, (2, 5)), rank=2)
    assert [r.name for r in result.records] == ["emb", "fc"]  # tables compress; recurrent layers do not
    said = [r.message for r in caplog.records if "does not compress" in r.message]
    assert len(said) == 1 and "also reaches 1 LSTM, 1 GRU, which" in said[0], said


def test_planning_a_compressed_model_reaches_its_1x1_stages_as_convolutions(caplog):
    """lcpress costs / profile / predict_costs on a low-rank model see the realized 1×1 stages as layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1)).eval()
    x = torch.randn(1, 3, 8, 8)
    _compress(model, ["*"], x, rank=8, rank_multiple=1, shape="channel")
    assert isinstance(model[0][1], lcpress.nn.PointwiseConv2d)
    with torch.no_grad():
        before = model(x)
    with caplog.at_level("WARNING", logger="lcpress"):
        prediction = lcpress.predict_costs(model, {"tasks": [{"layers": ["*"], "scheme": "quantize"}]}, x)
    assert list(prediction.table["layer"]) == ["0.0", "0.1", "2.0", "2.1"]
    assert not [r for r in caplog.records if "does not compress" in r.message]
    assert isinstance(model[0][1], lcpress.nn.PointwiseConv2d)  # a preview plans a copy: the model is left be
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


class ReadsWeight(nn.Module):
    """A forward that reads a layer's weight itself, as a ViT patch embedding reads its dtype."""

    def __init__(self):
        super().__init__()
        self.patch, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.patch(x.to(self.patch.weight.dtype))))


def test_a_layer_whose_realized_module_the_forward_cannot_run_with_stays_dense_and_the_rest_is_realized(caplog):
    torch.manual_seed(0)
    model, x = ReadsWeight(), torch.randn(2, 16)
    config = {"tasks": [{"layers": ["patch", "head"], "options": {"rank": 2, "rank_multiple": 1}, "cost": "params"}],
              "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress.realize"):
        result = lcpress.compress(model, config, example_input=x, progress=False)
    assert "does not run with patch realized (AttributeError" in caplog.text
    realized = {r.name: r.realized for r in result.records}
    assert realized == {"patch": False, "head": True} and isinstance(model.patch, nn.Linear)
    assert result.max_abs_error < 1e-5  # the model runs, and computes Δ(θ)


def test_a_target_line_says_which_layers_realization_kept_dense(tmp_path):
    """The C step's "achieved" prices the forms chosen; the model holds a kept layer dense, and the line says so."""
    torch.manual_seed(0)
    config = {"tasks": [{"layers": ["patch"], "options": {"rank_multiple": 1},
                         "target": {"cost": "params", "ratio": 0.5}}],
              "schedule": {"steps": 0}, "output_dir": str(tmp_path / "run")}
    result = lcpress.compress(ReadsWeight(), config, example_input=torch.randn(2, 16), progress=False)
    line = next(line for line in result.summary().splitlines() if line.startswith("tasks[0] target"))
    assert "by the forms chosen, but realization kept 'patch' dense" in line
    report = lcpress.write_report(tmp_path / "run", plots=False)
    assert "realization kept 'patch' dense" in report.markdown.read_text()


def test_a_tokenizer_style_mapping_is_passed_as_keyword_arguments():
    from collections import UserDict

    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, input_ids=None, attention_mask=None):
            return self.fc(input_ids * attention_mask)

    batch = UserDict({"input_ids": torch.randn(1, 8), "attention_mask": torch.ones(1, 8)})  # BatchEncoding's base
    result = lcpress.compress(Keywords(), {"tasks": [{"layers": ["fc"], "options": {"rank": 2}}],
                                           "schedule": {"steps": 0}}, example_input=batch, progress=False)
    assert result.records[0].realized


def test_a_preview_given_training_batches_picks_the_forms_the_run_picks_at_its_first_step(dense_mlp, digits):
    import copy

    config = {"tasks": [{"layers": ["1", "3"], "alpha": 2e-5, "options": {"rank_multiple": 1}}],
              "schedule": {"steps": 1}, "train": {"epochs": 1}}  # α's trade-off depends on the μ0 the run measures
    preview = lcpress.predict_costs(copy.deepcopy(dense_mlp), config, torch.randn(1, 64), calibration=digits[0])
    result = lcpress.compress(copy.deepcopy(dense_mlp), config, loaders=digits, progress=False)
    assert preview.table["flops_after"].sum() == result.history["cost_flops"].iloc[0]


class StandardizedConv(nn.Conv2d):
    """A conv with a forward of its own (timm's StdConv2d standardizes its weight): plain layers cannot realize it."""

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def _hooked():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    model[0].register_forward_hook(lambda module, args, out: out * 2)
    return model


def _forward_replaced():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    inner = model[0].forward
    model[0].forward = lambda x: inner(x) * 2  # as accelerate's hooks wrap a module's forward
    return model


@pytest.mark.parametrize("make, problem", [
    (lambda: nn.Sequential(StandardizedConv(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), "has a forward of its own"),
    (_hooked, "has forward hooks"),
    (_forward_replaced, "its forward was replaced on the module itself"),
])
def test_a_layer_plain_modules_cannot_realize_is_refused_by_name_and_left_alone_by_a_glob(make, problem, caplog):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(lcpress.ConfigError, match=rf"layer '0': .*{problem}"):
        _compress(make(), ["0"], x, rank=2)
    torch.manual_seed(0)
    model = make()
    with caplog.at_level(logging.WARNING, logger="lcpress"):
        result = _compress(model, ["*"], x, rank=2, rank_multiple=1)
    assert [r.name for r in result.records] == ["2"] and problem in caplog.text
    assert result.max_abs_error < 1e-5 and not result.warnings


def test_a_realized_model_that_computes_something_else_is_a_warning_of_the_run():
    """The last line of defence: whatever slipped past the checks, a realized model far from Δ(θ) is reported."""
    from lcpress.core.realize import mismatch_warning

    expected = torch.tensor([[2.0, -4.0]])
    assert mismatch_warning(3e-6, expected) is None  # float rounding
    assert "differs from Δ(θ)'s by up to 0.5 (12.5% of its largest output)" in mismatch_warning(0.5, expected)
    assert mismatch_warning(0.05, expected.bfloat16()) is None  # half types round far more
    assert "outputs NaN or infinite values where Δ(θ)'s outputs are finite: a realized layer's intermediate " \
           "overflowed torch.float16" in mismatch_warning(float("inf"), expected.half())


@pytest.mark.parametrize("scheme, options", [("quantize", {"k": 4}), ("prune", {"keep_fraction": 0.2}),
                                             ("prune", {"structured": True, "keep": 8})])
def test_a_float64_model_is_realized_in_float64_exactly(scheme, options):
    """The bias of a decoded or row-pruned layer is copied in the model's dtype (it was rounded to float32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    with torch.no_grad():
        model[0].bias.add_(0.1234567890123)
    config = {"tasks": [{"layers": ["0"], "scheme": scheme, "options": options}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=torch.randn(3, 16, dtype=torch.float64), progress=False)
    assert result.records[0].realized and result.max_abs_error < 1e-12
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.float64}


def test_a_decoded_layer_first_run_in_inference_mode_still_trains_afterwards():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config = {"tasks": [{"layers": ["0"], "scheme": "quantize", "options": {"k": 4}}], "schedule": {"steps": 0}}
    lcpress.compress(model, config, example_input=torch.randn(1, 16), progress=False)
    model[0]._cache = None  # as freshly loaded: nothing decoded yet
    x = torch.randn(2, 16, requires_grad=True)
    with torch.inference_mode():
        expected = model(x.detach())
    out = model(x)  # used to fail: "Inference tensors cannot be saved for backward"
    out.sum().backward()
    assert x.grad is not None and torch.equal(out.detach(), expected)


def test_a_model_returning_an_output_object_with_logits_is_realized_and_checked():
    """The built-in trainer reads .logits; the realization check read only tensors, tuples, dicts."""
    from dataclasses import dataclass

    @dataclass
    class Out:
        logits: torch.Tensor

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return Out(self.fc(x))

    result = _compress(Classifier(), ["fc"], torch.randn(2, 16), rank=2, rank_multiple=1)
    assert result.records[0].realized and result.max_abs_error < 1e-5


def test_the_realization_check_sees_every_tensor_a_model_outputs():
    """A tuple's first element may be the input passed through; comparing it alone proves nothing."""
    from lcpress.core.realize import eval_output

    class PassThrough(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return x, {"scores": self.fc(x)}

    model, x = PassThrough(), torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(eval_output(model, x), torch.cat([x.reshape(-1), model.fc(x).reshape(-1)]))

"""A failing plugin is named, with the layer and the LC step; the run resumes once it is fixed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcpress
from lcpress import LcpressError, PluginError
from lcpress.errors import CStepError
from lcpress.core.registry import get_registry, using_plugins
from lcpress.io.files import read_file

LowRankScheme = get_registry().scheme("low_rank")


class Flaky(LowRankScheme):
    """Low rank that raises in one method at one LC step while ``broken`` is set."""

    name = "flaky"
    broken: str | None = None  # the method that raises: "compress", "candidates_many", "decompress", "realize"
    at_step = 2
    calls = 0

    def _maybe_fail(self, method: str, step: int | None = None) -> None:
        if Flaky.broken == method and (step is None or step == Flaky.at_step):
            raise RuntimeError("division by zero in the rank search")

    def candidates_many(self, items):
        self._maybe_fail("candidates_many", items[0][1].step)
        return super().candidates_many(items)

    def compress(self, w, ctx):
        Flaky.calls += 1
        self._maybe_fail("compress", ctx.step)
        return super().compress(w, ctx)

    def decompress(self, state):
        self._maybe_fail("decompress")
        return super().decompress(state)

    def realize(self, state, module):
        self._maybe_fail("realize")
        return super().realize(state, module)


class FlakyPlugin:
    __name__ = "flaky_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(Flaky)


@pytest.fixture
def flaky(plugins):
    Flaky.broken, Flaky.calls = None, 0
    plugins(FlakyPlugin())
    yield Flaky
    Flaky.broken = None


DATA = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
TARGET = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))


def train(model, penalty, step):
    """A deterministic L step: a few full-batch SGD steps (optimizer state is not carried over)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(DATA), TARGET) + penalty()
        loss.backward()
        opt.step()
    return loss.item()


def config(output_dir=None):
    cfg = {"tasks": [{"layers": ["0", "2"], "scheme": "flaky", "options": {"rank_multiple": 4},
                      "target": {"cost": "params", "ratio": 0.6}}],
           "schedule": {"mu0": 0.01, "factor": 2.0, "steps": 3}}
    if output_dir is not None:
        cfg["output_dir"] = str(output_dir)
    return cfg


def compress(model, cfg, **kw):
    return lcpress.compress(model, cfg, train, example_input=DATA[:1], progress=False, **kw)


def test_c_step_failure_names_plugin_layer_and_step(flaky):
    flaky.broken = "compress"
    message = (r"scheme 'flaky' \(plugin 'flaky_plugin', \(registered at run time\)\) raised in compress\(\) "
               r"on layer '0' at LC step 2: RuntimeError: division by zero in the rank search")
    with pytest.raises(CStepError, match=message) as info:
        compress(tiny_model(), config())
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("method,what", [("candidates_many", "candidates"), ("decompress", "decompress")])
def test_failure_in_any_scheme_method_is_named(flaky, method, what):
    flaky.broken = method
    with pytest.raises(CStepError, match=rf"scheme 'flaky' \(plugin 'flaky_plugin'.*raised in {what}\(\) on layer '0'"):
        compress(tiny_model(), config())


def test_checkpoint_survives_the_failure_and_the_fixed_plugin_resumes(flaky, tmp_path):
    reference = tiny_model()
    compress(reference, config(tmp_path / "clean"))

    flaky.broken = "compress"
    with pytest.raises(CStepError, match=r"LC step 2.*The checkpoint after LC step 1 is intact: fix the plugin and "
                                         r"resume \(lcpress compress --resume, or resume=True\)"):
        compress(tiny_model(), config(tmp_path / "run"))
    _, meta = read_file(tmp_path / "run" / "checkpoint.safetensors")  # checksum verified: not half-written
    assert meta["engine"]["next_step"] == 2 and len(meta["engine"]["history"]) == 2

    flaky.broken = None  # the plugin is fixed
    resumed_model = tiny_model()
    resumed = compress(resumed_model, config(tmp_path / "run"), resume=True)
    assert len(resumed.history) == 4
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name  # exactly as if nothing had failed


def test_realize_failure_is_named_and_resume_skips_the_lc_steps(flaky, tmp_path):
    flaky.broken = "realize"
    with pytest.raises(LcpressError, match=r"scheme 'flaky' \(plugin 'flaky_plugin'.*raised in realize\(\) on layer"):
        compress(tiny_model(), config(tmp_path / "run"))
    flaky.broken, flaky.calls = None, 0
    result = compress(tiny_model(), config(tmp_path / "run"), resume=True)
    assert flaky.calls == 0  # every LC step was in the checkpoint
    assert result.max_abs_error < 1e-5


def test_cost_model_failure_names_the_plugin_and_layer(plugins):
    class Broken(lcpress.CostModel):
        name = "broken_cost"

        def cost(self, spec, form):
            raise ZeroDivisionError("no table entry")

    class CostPlugin:
        __name__ = "cost_plugin"

        @lcpress.hookimpl
        def lcpress_register_cost_models(self, register):
            register(Broken)

    plugins(CostPlugin())
    cfg = {"tasks": [{"layers": ["0"], "cost": "broken_cost", "alpha": 1e-6}], "schedule": {"steps": 0}}
    with pytest.raises(PluginError, match=r"cost model 'broken_cost' \(plugin 'cost_plugin'.*\) raised pricing "
                                          r"layer '0' at LC step 0: ZeroDivisionError: no table entry"):
        lcpress.compress(tiny_model(), cfg, example_input=DATA[:1], progress=False)


# --------------------------------------------------- names cannot be taken over
class Impostor(LowRankScheme):
    name = "low_rank"


class ImpostorPlugin:
    __name__ = "impostor_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(Impostor)


def test_runtime_plugin_cannot_replace_a_builtin_name():
    builtin = get_registry().scheme("low_rank")
    with pytest.raises(PluginError, match=r"scheme name 'low_rank' is registered twice: by plugin "
                                          r"'lcpress.plugins.low_rank' \(lcpress .*\) and by plugin 'impostor_plugin'"):
        with using_plugins(ImpostorPlugin()):
            pass
    assert get_registry().scheme("low_rank") is builtin  # the failed block left the registry as it was


def test_using_plugins_nests_and_restores():
    outer, inner = FlakyPlugin(), type("Other", (), {"__name__": "other_plugin"})()
    before = get_registry()
    with using_plugins(outer) as registry:
        assert registry.scheme("flaky") is Flaky
        with using_plugins(inner) as nested:
            assert nested.scheme("flaky") is Flaky  # the outer block's plugin is kept
            assert nested.manager.has_plugin("other_plugin")
        assert get_registry() is registry
    assert get_registry() is before and "flaky" not in before.schemes.classes


def test_two_runtime_plugins_with_one_name_are_both_registered():
    class Renamed(LowRankScheme):
        name = "renamed"

    class One:
        __name__ = "same_name"

        @lcpress.hookimpl
        def lcpress_register_schemes(self, register):
            register(Flaky)

    class Two:
        __name__ = "same_name"

        @lcpress.hookimpl
        def lcpress_register_schemes(self, register):
            register(Renamed)

    with using_plugins(One(), Two()) as registry:
        assert {"flaky", "renamed"} <= set(registry.schemes.classes)
        assert registry.schemes.origins["renamed"].plugin == "same_name#2"


# ------------------------------------------------- plugin code called while planning
class Copy(lcpress.Scheme):
    """Stores the weight as it is: a scheme whose only job is to host one broken method."""

    name = "copy_base"

    def compress(self, w, ctx):
        return lcpress.State({"w": w.detach().clone()}, {})

    def decompress(self, state):
        return state.tensors["w"]


class CheckLayerRaises(Copy):
    name = "check_layer_raises"

    def check_layer(self, spec, module):
        return spec.no_such_attribute


class InitRaises(Copy):
    name = "init_raises"

    def __init__(self, options=None):
        super().__init__(options)
        raise RuntimeError("init failed")


class SelectingRaises(Copy):
    name = "selecting_raises"

    def selecting(self):
        raise AttributeError("oops")


class UnavailableRaises(lcpress.CostModel):
    name = "unavailable_raises"

    def unavailable_reason(self):
        raise OSError("no /dev/npu0")

    def cost(self, spec, form):
        return 1.0


class ForLayersRaises(lcpress.CostModel):
    name = "for_layers_raises"

    def for_layers(self, specs):
        raise KeyError("conv9")

    def cost(self, spec, form):
        return 1.0


class PlanningPlugin:
    __name__ = "planning_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        for scheme in (CheckLayerRaises, InitRaises, SelectingRaises):
            register(scheme)

    @lcpress.hookimpl
    def lcpress_register_cost_models(self, register):
        register(UnavailableRaises)
        register(ForLayersRaises)


@pytest.mark.parametrize("task,message", [
    ({"scheme": "check_layer_raises"}, r"scheme 'check_layer_raises' \(plugin 'planning_plugin', \(registered at run "
                                       r"time\)\) raised in check_layer\(\) on layer '0'.*AttributeError"),
    ({"scheme": "init_raises"}, r"scheme 'init_raises' \(plugin 'planning_plugin'.*\) raised in __init__\(\) for "
                                r"tasks\[0\]: RuntimeError: init failed"),
    ({"scheme": "selecting_raises", "target": {"cost": "params", "ratio": 0.5}},
     r"scheme 'selecting_raises' \(plugin 'planning_plugin'.*\) raised in selecting\(\) for tasks\[0\]: "
     r"AttributeError: oops"),
    ({"scheme": "low_rank", "cost": "unavailable_raises"},
     r"cost model 'unavailable_raises' \(plugin 'planning_plugin'.*\) raised in unavailable_reason\(\): "
     r"OSError: no /dev/npu0"),
    ({"scheme": "low_rank", "cost": "for_layers_raises"},
     r"cost model 'for_layers_raises' \(plugin 'planning_plugin'.*\) raised in for_layers\(\) while planning the run: "
     r"KeyError: 'conv9'"),
])
def test_plugin_code_called_while_planning_is_named(plugins, task, message):
    plugins(PlanningPlugin())
    cfg = {"tasks": [{"layers": ["0"], **task}], "schedule": {"steps": 0}}
    with pytest.raises(PluginError, match=message) as info:
        compress(tiny_model(), cfg)
    assert not isinstance(info.value, lcpress.ConfigError)  # the plugin's bug, not a key of the user's config


# -------------------------------------------- prices for the history, reports, realization
class RaisingCost(lcpress.CostModel):
    """Prices dense layers only, and raises (as docs/plugins.md §2 says) for what it cannot price."""

    name = "raising_cost"

    def cost(self, spec, form):
        if not isinstance(form, lcpress.Dense):
            raise ValueError(f"cannot price {form.describe()}")
        return float(spec.params)


class NegativeCost(lcpress.CostModel):
    name = "negative_cost"

    def cost(self, spec, form):
        return float(spec.params) if isinstance(form, lcpress.Dense) else -1.0


class VectorizedRaising(lcpress.CostModel):
    """Overrides costs() itself: the base's guard must still cover it."""

    name = "vectorized_raising"

    def cost(self, spec, form):
        return 1.0

    def costs(self, spec, forms):
        raise KeyError("no table row")


class PricingPlugin:
    __name__ = "pricing_plugin"

    @lcpress.hookimpl
    def lcpress_register_cost_models(self, register):
        for model in (RaisingCost, NegativeCost, VectorizedRaising):
            register(model)


def test_cost_model_raising_while_pricing_the_history_names_plugin_layer_and_step(plugins):
    plugins(PricingPlugin())
    cfg = {"tasks": [{"layers": ["0"], "options": {"rank": 2}, "cost": "raising_cost"}], "schedule": {"steps": 0}}
    with pytest.raises(PluginError, match=r"cost model 'raising_cost' \(plugin 'pricing_plugin', \(registered at run "
                                          r"time\)\) raised pricing layer '0' in form 'rank 2' at LC step 0: "
                                          r"ValueError: cannot price rank 2"):
        compress(tiny_model(), cfg)


@pytest.mark.parametrize("name,message", [
    ("raising_cost", r"raised pricing the linear 16→24 layer in form 'rank 1': ValueError: cannot price rank 1"),
    ("vectorized_raising", r"raised pricing the linear 16→24 layer: KeyError: 'no table row'"),
    ("negative_cost", r"pricing the linear 16→24 layer in form 'rank 1': cost\(\) priced the linear 16→24 layer in "
                      r"form 'rank 1' at -1.0; costs must be finite and non-negative"),
])
def test_cost_model_guards_itself_for_callers_that_do_not(plugins, name, message):
    """Realization and reports call costs() outside the engine: the cost model's own guard names it there."""
    registry = plugins(PricingPlugin())
    model = registry.cost_model(name)()
    spec = lcpress.spec_of(nn.Linear(16, 24), (1, 16))
    with pytest.raises(PluginError, match=rf"cost model '{name}' \(plugin 'pricing_plugin'.*\) {message}"):
        model.costs(spec, [lcpress.LowRank(1)])


def test_bad_price_names_plugin_package_layer_and_step(plugins):
    plugins(PricingPlugin())
    cfg = {"tasks": [{"layers": ["0"], "cost": "negative_cost", "target": {"cost": "negative_cost", "ratio": 0.5}}],
           "schedule": {"steps": 0}}
    with pytest.raises(PluginError, match=r"cost model 'negative_cost' \(plugin 'pricing_plugin', \(registered at run "
                                          r"time\)\) pricing layer '0' at LC step 0: cost\(\) priced the linear 16→24 "
                                          r"layer in form 'rank \d+' at -1.0; costs must be finite and non-negative"):
        compress(tiny_model(), cfg)


# ------------------------------------------------------- candidates the selection would trust
class BadErrors(Copy):
    """Selects between dense and rank 1, with an error it cannot have."""

    name = "bad_errors"
    error = float("nan")

    def selecting(self):
        return True

    def candidates(self, w, ctx):
        return lcpress.Candidates([lcpress.Dense(), lcpress.LowRank(1)], torch.tensor([0.0, type(self).error]))


class BadErrorsPlugin:
    __name__ = "bad_errors_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(BadErrors)


@pytest.mark.parametrize("error,problem", [(float("nan"), "candidate errors hold NaN or infinite values"),
                                           (-5.0, r"candidate errors must be non-negative .*got -5")])
def test_unusable_candidate_errors_stop_the_c_step_naming_plugin_layer_and_step(plugins, monkeypatch, error, problem):
    monkeypatch.setattr(BadErrors, "error", error)
    plugins(BadErrorsPlugin())
    cfg = {"tasks": [{"layers": ["0"], "scheme": "bad_errors", "target": {"cost": "params", "ratio": 0.5}}],
           "schedule": {"steps": 0}}
    with pytest.raises(CStepError, match=rf"scheme 'bad_errors' \(plugin 'bad_errors_plugin'.*\) on layer '0' at LC "
                                         rf"step 0: {problem}"):
        compress(tiny_model(), cfg)


# ------------------------------------------------------------ a scheme's own meta keys
class MetaForm(Copy):
    """Stores its own form name under "form", as the built-ins do — here the word "dense"."""

    name = "meta_form"

    def compress(self, w, ctx):
        return lcpress.State({"w": 0.5 * w.detach()}, {"form": "dense"})


class MetaFormPlugin:
    __name__ = "meta_form_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(MetaForm)


def test_a_schemes_own_form_key_is_not_taken_for_the_cores_dense_marker(plugins):
    plugins(MetaFormPlugin())
    model = tiny_model()
    w = model[0].weight.detach().clone()
    compress(model, {"tasks": [{"layers": ["0"], "scheme": "meta_form"}], "schedule": {"steps": 0}})
    assert torch.allclose(model[0].weight, 0.5 * w)  # the scheme's decompress ran, not the core's dense answer


def test_dense_states_of_older_checkpoints_are_still_read_as_dense():
    from lcpress.core.scheme import dense_state, is_dense

    w = torch.randn(3, 4)
    assert is_dense(dense_state(w)) and dense_state(w).meta.get("form") is None
    old = lcpress.State({"weight": w}, {"form": "dense"})  # how checkpoints written before marked one
    assert is_dense(old) and torch.equal(LowRankScheme().decompress(old), w)
    assert not is_dense(lcpress.State({"w": w}, {"form": "dense"}))


class PricedNotRealized(LowRankScheme):
    """Chooses low-rank forms but keeps the base class's realize(): a dense copy."""

    name = "priced_not_realized"
    realize = lcpress.Scheme.realize


class Unlisted(nn.Sequential):
    """A realized module class no plugin allow-lists."""


class UnlistedRealized(LowRankScheme):
    name = "unlisted_realized"

    def realize(self, state, module):
        return Unlisted(*super().realize(state, module))


class RealizingPlugin:
    __name__ = "realizing_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(PricedNotRealized)
        register(UnlistedRealized)


def test_a_form_the_scheme_does_not_realize_is_reported_kept_dense_not_compressed(plugins, caplog):
    plugins(RealizingPlugin())
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    config = {"tasks": [{"layers": ["0"], "scheme": "priced_not_realized", "options": {"rank": 4}}],
              "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress.realize"):
        result = lcpress.compress(model, config, example_input=torch.randn(1, 32), progress=False)
    assert "has no realize() of its own" in caplog.text
    row = result.layers.set_index("layer").loc["0"]
    assert row["params_after"] == row["params_before"] == 32 * 32 + 32  # the report prices what the model is


def test_a_realized_module_no_file_can_rebuild_is_named_before_the_model_is_saved(plugins, tmp_path):
    plugins(RealizingPlugin())
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    config = {"tasks": [{"layers": ["0"], "scheme": "unlisted_realized", "options": {"rank": 4}}],
              "schedule": {"steps": 0}, "output_dir": str(tmp_path / "run")}
    with pytest.raises(PluginError, match=r"scheme 'unlisted_realized' .*realized layer '0': realize\(\) returned "
                                          r"Unlisted, which a model file cannot rebuild"):
        lcpress.compress(model, config, example_input=torch.randn(1, 32), progress=False)

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
                                          r"layer '0': ZeroDivisionError: no table entry"):
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

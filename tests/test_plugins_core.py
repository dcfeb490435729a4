"""Registry behaviour: runtime plugins, collisions, broken plugins, listing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lcpress
from lcpress import PluginError
from lcpress.cli import main
from lcpress.core.registry import build_registry, get_registry


class ToyCost(lcpress.CostModel):
    name = "toy_cost"

    def cost(self, spec, form):
        return 1.0


class RuntimePlugin:
    __name__ = "runtime_plugin"

    @lcpress.hookimpl
    def lcpress_register_cost_models(self, register):
        register(ToyCost)


def test_builtins_register_through_the_hooks():
    registry = build_registry(autoload=False)
    assert {"low_rank"} <= set(registry.schemes.classes)
    assert {"params", "flops"} <= set(registry.cost_models.classes)
    assert registry.schemes.origins["low_rank"].plugin == "lcpress.plugins.low_rank"
    assert registry.schemes.origins["low_rank"].package == "lcpress"


def test_runtime_plugin_object_is_registered():
    registry = build_registry(extra_plugins=(RuntimePlugin(),), autoload=False)
    assert registry.cost_model("toy_cost") is ToyCost
    assert registry.cost_models.origins["toy_cost"].plugin == "runtime_plugin"


def test_duplicate_name_names_both_plugins():
    class Clash(lcpress.CostModel):
        name = "flops"

        def cost(self, spec, form):
            return 0.0

    class ClashPlugin:
        __name__ = "clash_plugin"

        @lcpress.hookimpl
        def lcpress_register_cost_models(self, register):
            register(Clash)

    with pytest.raises(PluginError, match=r"'flops' is registered twice: by plugin 'lcpress.costmodels.flops'.*'clash_plugin'"):
        build_registry(extra_plugins=(ClashPlugin(),), autoload=False)


def test_plugin_raising_in_its_hook_is_named():
    class Raising:
        __name__ = "raising_plugin"

        @lcpress.hookimpl
        def lcpress_register_schemes(self, register):
            raise RuntimeError("broken install")

    with pytest.raises(PluginError, match=r"'raising_plugin'.*lcpress_register_schemes.*broken install"):
        build_registry(extra_plugins=(Raising(),), autoload=False)


def test_registering_a_non_scheme_is_refused():
    class Wrong:
        __name__ = "wrong_plugin"

        @lcpress.hookimpl
        def lcpress_register_schemes(self, register):
            register(dict)

    with pytest.raises(PluginError, match="does not subclass lcpress.Scheme"):
        build_registry(extra_plugins=(Wrong(),), autoload=False)


def test_misspelled_hook_is_an_error():
    class Typo:
        __name__ = "typo_plugin"

        @lcpress.hookimpl
        def lcpress_register_schemas(self, register):
            pass

    with pytest.raises(PluginError, match="lcpress_register_schemas"):
        build_registry(extra_plugins=(Typo(),), autoload=False)


def test_unknown_name_lists_what_is_registered():
    with pytest.raises(PluginError, match=r"no scheme named 'svd'; registered: .*low_rank.*lcpress plugins"):
        get_registry().scheme("svd")


def test_plugins_command_lists_package_and_version(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "low_rank" in out and "flops" in out and "params" in out
    assert f"lcpress {lcpress.__version__}" in out
    assert "(lcpress.plugins.quantize)  — Linear, Conv2d, Embedding" in out  # the layer kinds each scheme takes
    assert "(lcpress.plugins.alds)  — Linear, Conv2d\n" in out


class Doubler(torch.nn.Module):
    """A realized-module class of a plugin's own."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.inner = torch.nn.Linear(features, features)

    def forward(self, x):
        return 2 * self.inner(x)


class ExtrasPlugin:
    """A plugin adding a CLI command and a module class."""

    __name__ = "extras_plugin"

    @lcpress.hookimpl
    def lcpress_register_commands(self, register):
        register("hello", lambda args: print(f"hello {args.who}") or 3, help="say hello",
                 arguments=lambda parser: parser.add_argument("who"))

    @lcpress.hookimpl
    def lcpress_register_modules(self, register):
        register(Doubler, lambda m: {"features": m.features})


def test_plugin_command_is_listed_and_runs(plugins, capsys):
    plugins(ExtrasPlugin())
    assert main(["hello", "world"]) == 3  # the command's return value is the exit code
    assert capsys.readouterr().out == "hello world\n"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "commands:\n  hello" in out and "modules:\n  Doubler" in out and "extras_plugin" in out


def test_plugin_command_cannot_take_a_builtin_or_anothers_name(plugins, capsys):
    class Shadow:
        __name__ = "shadow_plugin"

        @lcpress.hookimpl
        def lcpress_register_commands(self, register):
            register("demo", lambda args: 0)

    plugins(Shadow())
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'shadow_plugin'" in err and "'demo', which is a built-in lcpress command" in err
    with pytest.raises(PluginError, match=r"name '(hello|Doubler)' is registered twice: by plugin 'extras_plugin'.*and by plugin 'second'"):
        build_registry(extra_plugins=(ExtrasPlugin(), _renamed(ExtrasPlugin(), "second")), autoload=False)


def _renamed(plugin, name):
    plugin.__name__ = name
    return plugin


def test_plugin_module_class_round_trips_pickle_free(plugins, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Doubler(4))
    x = torch.randn(3, 4)
    with pytest.raises(lcpress.CheckpointError, match="cannot rebuild on its own .*Doubler"):
        lcpress.save(model, tmp_path / "before.safetensors")
        lcpress.load(tmp_path / "before.safetensors")
    plugins(ExtrasPlugin())
    path = lcpress.save(model, tmp_path / "model.safetensors")
    loaded = lcpress.load(path)
    assert type(loaded[1]) is Doubler and loaded[1].features == 4
    torch.testing.assert_close(loaded(x), model(x))


def test_module_registration_must_be_a_module_class():
    class Bad:
        __name__ = "bad_modules"

        @lcpress.hookimpl
        def lcpress_register_modules(self, register):
            register(object, lambda m: {})

    with pytest.raises(PluginError, match="plugin 'bad_modules'.*nn.Module subclass"):
        build_registry(extra_plugins=(Bad(),), autoload=False)


def test_module_class_named_like_a_builtin_one_is_refused():
    class GroupedLinear(torch.nn.Module):  # the plugin's own class, named like lcpress.nn's
        def __init__(self, features: int) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(features, features)

    class Shadowing:
        __name__ = "shadowing_plugin"

        @lcpress.hookimpl
        def lcpress_register_modules(self, register):
            register(GroupedLinear, lambda m: {"features": m.inner.in_features})

    with pytest.raises(PluginError, match=r"plugin 'shadowing_plugin' .*registered module class .*GroupedLinear, but "
                                          r"lcpress already rebuilds saved modules named 'GroupedLinear' as its own "
                                          r"lcpress.nn.modules.GroupedLinear; rename your class"):
        build_registry(extra_plugins=(Shadowing(),), autoload=False)


@dataclasses.dataclass
class OutOfRangeDefault(lcpress.Options):
    dtype_bits: int = lcpress.option(3, help="bits of a stored number", choices=(8, 16, 32))


@dataclasses.dataclass
class WronglyTypedDefault(lcpress.Options):
    rank: int = lcpress.option("four", help="rank", ge=1)


class BadDefaultCost(lcpress.CostModel):
    name = "bad_default_cost"
    Options = OutOfRangeDefault

    def cost(self, spec, form):
        return 1.0


class BadTypeScheme(lcpress.Scheme):
    name = "bad_type_scheme"
    Options = WronglyTypedDefault

    def compress(self, w, ctx):
        return lcpress.State({"w": w.detach().clone()}, {})

    def decompress(self, state):
        return state.tensors["w"]


class RaisingUnavailable(lcpress.CostModel):
    name = "npu_latency"

    def unavailable_reason(self):
        raise ModuleNotFoundError("No module named 'npu_driver'")

    def cost(self, spec, form):
        return 1.0


class DeclarationsPlugin:
    __name__ = "declarations_plugin"

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(BadTypeScheme)

    @lcpress.hookimpl
    def lcpress_register_cost_models(self, register):
        register(BadDefaultCost)
        register(RaisingUnavailable)


def test_options_default_that_breaks_its_declaration_is_the_plugins_error(plugins):
    plugins(DeclarationsPlugin())
    with pytest.raises(PluginError, match=r"scheme 'bad_type_scheme' \(plugin 'declarations_plugin'.*\) building its "
                                          r"options for tasks\[0\]\.options: the default of option 'rank' \('four'\) "
                                          r"of WronglyTypedDefault is not of its declared type, int") as info:
        lcpress.load_config({"tasks": [{"layers": ["0"], "scheme": "bad_type_scheme"}]})
    assert not isinstance(info.value, lcpress.ConfigError)  # never blamed on a key the user did not write
    with pytest.raises(PluginError, match=r"cost model 'bad_default_cost' \(plugin 'declarations_plugin'.*\) building "
                                          r"its options and an instance for tasks\[0\]\.cost: the default of option 'dtype_bits' \(3\) of OutOfRangeDefault is outside its "
                                          r"declared range \(one of 8, 16 or 32\)"):
        lcpress.load_config({"tasks": [{"layers": ["0"], "cost": "bad_default_cost"}]})


def test_plugins_command_lists_broken_plugins_as_unusable_and_goes_on(plugins, capsys):
    plugins(DeclarationsPlugin())
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "low_rank" in out and "params" in out  # every other plugin is still listed
    assert ("(declarations_plugin)  [no: cost model 'npu_latency' (plugin 'declarations_plugin', (registered at run "
            "time)) raised in unavailable_reason(): ModuleNotFoundError: No module named 'npu_driver'.]") in out
    assert "bad_default_cost" in out and "[no: the default of option 'dtype_bits' (3)" in out
    assert "[no: the default of option 'rank' ('four') of WronglyTypedDefault is not of its declared type, int]" in out


def test_guard_adds_whose_and_where_to_lcpress_checks_on_a_plugins_result():
    from lcpress.core.guard import plugin_call
    from lcpress.errors import PluginContractError

    with pytest.raises(PluginError, match=r"^cost model 'toy_cost' pricing layer 'fc' at LC step 3: returned -1\.$"):
        with plugin_call(ToyCost(), "pricing layer 'fc' at LC step 3"):
            raise PluginContractError("returned -1")
    model = ToyCost()
    with pytest.raises(PluginError, match=r"^cost model 'toy_cost' raised pricing layer 'fc': ValueError: no row\.$"):
        with plugin_call(model, "pricing layer 'fc'"), plugin_call(model, "pricing the linear 4→4 layer"):
            raise ValueError("no row")  # the outermost guard names it: its caller knows the layer's name

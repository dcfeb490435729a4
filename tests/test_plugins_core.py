"""Registry behaviour: runtime plugins, collisions, broken plugins, listing."""

from __future__ import annotations

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

"""Registry behaviour: runtime plugins, collisions, broken plugins, listing."""

from __future__ import annotations

import pytest

import lcpress
from lcpress import PluginError
from lcpress.cli import main
from lcpress.registry import build_registry, get_registry


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
